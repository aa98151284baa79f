import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mmalign.rewards.vendi import vendi_score, vendi_score_from_kernel


def scipy_vendi(K):
    """The reference computation (vendi_score package / dgm-eval): eigvalsh of K/n, 0 log 0 = 0."""
    w = scipy.linalg.eigvalsh(K / K.shape[0])
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


def test_identical_samples_score_one():
    x = torch.tensor([[1.0, 2.0, 3.0]]).repeat(6, 1)
    assert vendi_score(x).item() == pytest.approx(1.0, abs=1e-12)
    assert vendi_score(x, kernel="rbf", bandwidth=1.0).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_orthogonal_samples_score_n(n):
    x = torch.eye(n) * 5  # orthogonal, not unit: the cosine kernel normalises
    assert vendi_score(x).item() == pytest.approx(n, rel=1e-12)
    assert vendi_score(K=torch.eye(n)).item() == pytest.approx(n, rel=1e-12)
    assert vendi_score(x, q=float("inf")).item() == pytest.approx(n, rel=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.3, 0.8, -0.5])
def test_two_points_at_cosine_c(c):
    # K/2 = [[1, c], [c, 1]] / 2 has eigenvalues (1 ± c)/2
    lam = [(1 + c) / 2, (1 - c) / 2]
    expected = math.exp(-sum(v * math.log(v) for v in lam))
    x = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]], dtype=torch.float64) * torch.tensor([[2.0], [0.5]])
    assert vendi_score(x).item() == pytest.approx(expected, rel=1e-12)
    K = torch.tensor([[1.0, c], [c, 1.0]])
    assert vendi_score_from_kernel(K).item() == pytest.approx(expected, rel=1e-6)
    # order 2: 1 / Σλ² = 2 / (1 + c²)
    assert vendi_score(x, q=2).item() == pytest.approx(2 / (1 + c * c), rel=1e-12)


def test_two_identical_and_one_orthogonal():
    # K/3 = [[1,1,0],[1,1,0],[0,0,1]]/3: eigenvalues 2/3, 1/3, 0 (0 log 0 = 0)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    expected = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert vendi_score(x).item() == pytest.approx(expected, rel=1e-12)  # 1.8899


def test_rbf_bandwidth_limits_and_gamma_form():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    assert vendi_score(x, kernel="rbf", bandwidth=1e4).item() == pytest.approx(1.0, abs=1e-6)  # K → all ones
    assert vendi_score(x, kernel="rbf", bandwidth=1e-3).item() == pytest.approx(10.0, rel=1e-9)  # K → I
    mid = vendi_score(x, kernel="rbf", bandwidth=1.0)
    assert 1 < mid.item() < 10
    assert vendi_score(x, kernel="rbf", gamma=0.5).item() == pytest.approx(mid.item(), rel=1e-12)  # γ = 1/(2σ²)
    d2 = torch.cdist(x.double(), x.double()) ** 2
    assert mid.item() == pytest.approx(scipy_vendi(torch.exp(-d2 / 2).numpy()), rel=1e-10)


@pytest.mark.parametrize("n, d", [(50, 8), (8, 50)])  # d < n uses the [d, d] dual
def test_cosine_parity_with_scipy(n, d):
    x = np.random.default_rng(0).standard_normal((n, d)) + 0.5
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert vendi_score(torch.from_numpy(x)).item() == pytest.approx(scipy_vendi(xn @ xn.T), rel=1e-10)


def test_bad_inputs_fail_loudly():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="zero row"):
        vendi_score(torch.cat([x, torch.zeros(1, 3)]))
    with pytest.raises(ValueError, match="exactly one of"):
        vendi_score(x, kernel="rbf")
    with pytest.raises(ValueError, match="kernel must be"):
        vendi_score(x, kernel="linear")
    with pytest.raises(ValueError, match="k\\(x, x\\) = 1"):
        vendi_score(K=2 * torch.eye(3))
    with pytest.raises(ValueError, match="not both"):
        vendi_score(x, K=torch.eye(4))

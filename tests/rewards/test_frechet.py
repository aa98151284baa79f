import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mmalign.rewards import frechet
from mmalign.rewards.frechet import (
    ReferenceStats,
    fad_inf,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    per_sample_fad,
    per_sample_fad_batch,
)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def scipy_fd(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid / fadtk ``calc_frechet_distance`` (without the deprecated ``disp=False``)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def scipy_fd_feats(a, b):
    return scipy_fd(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# ---- hand-worked values -------------------------------------------------------------------------


def test_1d_gaussians_from_stats():
    # (mu1 - mu2)^2 + (s1 - s2)^2 with s the standard deviations: 3^2 + (1 - 2)^2 = 10
    out = frechet_distance_from_stats(t([0.0]), t([[1.0]]), t([3.0]), t([[4.0]]))
    assert out.shape == () and out.dtype == torch.float64
    assert out.item() == pytest.approx(10.0, abs=1e-12)


def test_1d_from_features():
    # a = [-1, 1]: mean 0, unbiased var 2; b = [1, 5]: mean 3, var 8 -> 9 + (√2 − √8)² = 9 + 2 = 11
    assert frechet_distance(t([[-1.0], [1.0]]), t([[1.0], [5.0]])).item() == pytest.approx(11.0, abs=1e-12)
    # same spread, shifted by 3 -> 9
    assert frechet_distance(t([[-1.0], [1.0]]), t([[2.0], [4.0]])).item() == pytest.approx(9.0, abs=1e-12)


def test_diagonal_covariances():
    # ‖(1, 1)‖² + (1 − 3)² + (2 − 4)² = 2 + 4 + 4
    out = frechet_distance_from_stats(t([0.0, 0.0]), torch.diag(t([1.0, 4.0])), t([1.0, 1.0]), torch.diag(t([9.0, 16.0])))
    assert out.item() == pytest.approx(10.0, abs=1e-12)


def test_gaussian_stats_matches_numpy_cov():
    x = np.random.default_rng(0).standard_normal((50, 7))
    mu, sigma = gaussian_stats(torch.from_numpy(x))
    np.testing.assert_allclose(mu.numpy(), x.mean(0), atol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x, rowvar=False), atol=1e-14)


@pytest.mark.parametrize("n", [5, 200])  # N < d (the [N, N] route) and N > d
def test_identical_sets_give_zero(n):
    x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    assert 0 <= frechet_distance(x, x).item() < 1e-9
    mu, sigma = gaussian_stats(x)
    assert 0 <= frechet_distance_from_stats(mu, sigma, mu, sigma).item() < 1e-9


# ---- parity with scipy.linalg.sqrtm ---------------------------------------------------------


def random_sets(n, m, d, rank=None, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((rank or d, d))  # rank < d: features live in a rank-dim subspace
    a = rng.standard_normal((n, rank or d)) @ mix
    b = rng.standard_normal((m, rank or d)) @ mix * 0.7 + rng.standard_normal(d) * 0.5
    return a, b


@pytest.mark.parametrize(
    "n, m, d, rank",
    [
        (400, 300, 16, None),  # well conditioned
        (300, 500, 64, None),
        (20, 300, 64, None),  # N < d: singular Σ_a
        (40, 30, 64, None),  # both singular
        (300, 400, 64, 10),  # rank-deficient features with N > d
        (12, 500, 128, 40),
    ],
)
def test_parity_with_scipy(n, m, d, rank):
    a, b = random_sets(n, m, d, rank)
    ref = scipy_fd_feats(a, b)
    out = frechet_distance(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert out == pytest.approx(ref, rel=1e-5)
    assert frechet_distance(torch.from_numpy(b), torch.from_numpy(a)).item() == pytest.approx(out, rel=1e-10)
    stats = [x for s in (a, b) for x in gaussian_stats(torch.from_numpy(s))]
    assert frechet_distance_from_stats(*stats).item() == pytest.approx(ref, rel=1e-5)


def test_rank_deficient_trace_is_exact():
    # Tr((Σ_aΣ_b)^½) = nuclear norm of A Bᵀ / √((n−1)(m−1)) (centred features): exact, no sqrtm.
    # The round-off eigenvalues of singular covariances must not add √ε-sized terms.
    a, b = random_sets(30, 40, 64)
    A, B = a - a.mean(0), b - b.mean(0)
    tr_sqrt = np.linalg.svd(A @ B.T, compute_uv=False).sum() / math.sqrt(29 * 39)
    diff = a.mean(0) - b.mean(0)
    exact = diff @ diff + (A**2).sum() / 29 + (B**2).sum() / 39 - 2 * tr_sqrt
    stats = [x for s in (a, b) for x in gaussian_stats(torch.from_numpy(s))]
    assert frechet_distance_from_stats(*stats).item() == pytest.approx(exact, rel=1e-12)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(exact, rel=1e-12)


def test_float32_inputs_and_dtype_option():
    a, b = (torch.from_numpy(x).float() for x in random_sets(100, 120, 16))
    ref = scipy_fd_feats(a.double().numpy(), b.double().numpy())
    assert frechet_distance(a, b).dtype == torch.float64
    out32 = frechet_distance(a, b, dtype=torch.float32)  # float32 loses ~1e-4 relative (hence float64)
    assert out32.dtype == torch.float32 and out32.item() == pytest.approx(ref, rel=1e-3)


def test_eps_fallback_when_decomposition_fails(monkeypatch):
    a, b = random_sets(100, 100, 8)
    stats = [x for s in (a, b) for x in gaussian_stats(torch.from_numpy(s))]
    real, calls = frechet._trace_sqrt_product, []

    def flaky(s1, s2):
        calls.append(1)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("did not converge")
        return real(s1, s2)

    monkeypatch.setattr(frechet, "_trace_sqrt_product", flaky)
    with pytest.warns(UserWarning, match="adding 1e-06"):
        out = frechet_distance_from_stats(*stats)
    assert len(calls) == 2 and out.item() == pytest.approx(scipy_fd_feats(a, b), rel=1e-5)


def test_small_set_route_falls_back_to_the_stats_route(monkeypatch):
    # both sets smaller than d: the [N, N] route; if its eigvalsh fails, the d x d route takes over
    a, b = random_sets(20, 30, 48)
    real, calls = frechet._sum_sqrt_eigvalsh, []

    def flaky(m):
        calls.append(m.shape[-1])
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("did not converge")
        return real(m)

    monkeypatch.setattr(frechet, "_sum_sqrt_eigvalsh", flaky)
    out = frechet_distance(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert calls == [20, 48] and out == pytest.approx(scipy_fd_feats(a, b), rel=1e-5)


def test_bad_inputs_fail_loudly():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(x, torch.full((10, 4), float("nan")))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance_from_stats(torch.zeros(4), torch.eye(4), torch.zeros(3), torch.eye(3))


# ---- per-sample FAD ---------------------------------------------------------------------------


def test_per_sample_fad_prefers_a_sample_from_the_reference():
    g = torch.Generator().manual_seed(0)
    ref = ReferenceStats.from_feats(torch.randn(4000, 16, generator=g))
    inside = torch.randn(50, 16, generator=g)
    shifted = torch.randn(50, 16, generator=g) + 1.0
    narrow = torch.randn(50, 16, generator=g) * 0.2
    fad_in = per_sample_fad(inside, ref)
    assert fad_in < per_sample_fad(shifted, ref) and fad_in < per_sample_fad(narrow, ref.mu, ref.sigma)
    # shifted by 1 in each of 16 dims: the mean term alone is ≈ 16
    assert per_sample_fad(shifted, ref).item() > 14


@pytest.mark.parametrize("frames", [10, 100])  # T < d ([T, T] route) and T > d
def test_per_sample_fad_parity_and_batch(frames):
    rng = np.random.default_rng(1)
    ref_feats = rng.standard_normal((500, 48))
    samples = [rng.standard_normal((frames, 48)) + 0.3 * i for i in range(3)]
    ref = ReferenceStats.from_feats(torch.from_numpy(ref_feats))
    expected = [scipy_fd_feats(s, ref_feats) for s in samples]
    singles = [per_sample_fad(torch.from_numpy(s), ref).item() for s in samples]
    np.testing.assert_allclose(singles, expected, rtol=1e-5)
    batch = per_sample_fad_batch([torch.from_numpy(s) for s in samples], ref.mu, ref.sigma)
    assert batch.shape == (3,)
    np.testing.assert_allclose(batch.numpy(), singles, rtol=1e-10)
    ragged = per_sample_fad_batch([torch.from_numpy(s[: frames - i]) for i, s in enumerate(samples)], ref)
    np.testing.assert_allclose(ragged[0].item(), singles[0], rtol=1e-10)
    with pytest.raises(ValueError, match="ReferenceStats"):
        per_sample_fad(torch.from_numpy(samples[0]), ref.mu)


# ---- FAD∞ ----------------------------------------------------------------------------------------


def test_inverse_n_fit_recovers_a_plus_b_over_n():
    sizes = t([500, 1000, 2000, 4000, 8000])
    intercept, slope, r2 = frechet._fit_inverse_n(sizes, 3.0 + 250.0 / sizes)
    assert intercept.item() == pytest.approx(3.0, abs=1e-10)
    assert slope.item() == pytest.approx(250.0, rel=1e-10) and r2.item() == pytest.approx(1.0, abs=1e-12)


def test_fad_inf_removes_the_small_sample_bias():
    # Features from N(δ, I) against the exact reference N(0, I): FAD∞ = ‖δ‖² = 1, while FAD at N
    # is ≈ 1 + b/N with b ≈ d + d(d+1)/4 (the mean and covariance estimation bias).
    d = 32
    g = torch.Generator().manual_seed(0)
    delta = torch.zeros(d, dtype=torch.float64)
    delta[0] = 1.0
    feats = torch.randn(20000, d, generator=g, dtype=torch.float64) + delta
    ref = (torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    fit = fad_inf(feats, ref, sizes=range(500, 4001, 500), num_repeats=4, generator=g, return_fit=True)
    assert fit.values.shape == (32,) and fit.sizes[0] == 500
    assert fit.values[fit.sizes == 500].mean() > 1.4  # plain FAD at N = 500 is biased upwards
    assert fit.score.item() == pytest.approx(1.0, abs=0.1)
    assert 200 < fit.slope.item() < 400 and fit.r2 > 0.5
    again = fad_inf(feats, ref, sizes=range(500, 4001, 500), num_repeats=4, generator=torch.Generator().manual_seed(0))
    assert again.shape == ()


def test_fad_inf_default_sizes_and_errors():
    x = torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
    fit = fad_inf(x, x, generator=torch.Generator().manual_seed(1), return_fit=True)
    assert fit.sizes.min() == 60 and fit.sizes.max() == 120  # min(500, N // 2) .. N
    with pytest.raises(ValueError, match="distinct sizes"):
        fad_inf(x, x, sizes=[50, 50])
    with pytest.raises(ValueError, match="distinct sizes"):
        fad_inf(x, x, sizes=[50, 200], replace=False)


# ---- reference statistics --------------------------------------------------------------------


def test_reference_stats_round_trip(tmp_path):
    feats = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    stats = ReferenceStats.from_feats(feats)
    assert stats.n == 64 and stats.sigma.dtype == torch.float64
    stats.save(tmp_path / "ref.safetensors")
    loaded = ReferenceStats.load(tmp_path / "ref.safetensors")
    assert loaded.n == 64
    torch.testing.assert_close(loaded.mu, stats.mu, rtol=0, atol=0)
    torch.testing.assert_close(loaded.sigma, stats.sigma, rtol=0, atol=0)
    assert frechet_distance_from_stats(loaded.mu, loaded.sigma, *gaussian_stats(feats)).item() < 1e-12

    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a ReferenceStats file"):
        ReferenceStats.load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="mu must be"):
        ReferenceStats(torch.zeros(3), torch.eye(4), 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    a, b = (torch.from_numpy(x) for x in random_sets(300, 40, 64, seed=3))
    cpu = frechet_distance(a, b)
    gpu = frechet_distance(a.cuda(), b.cuda())
    assert gpu.device.type == "cuda" and gpu.item() == pytest.approx(cpu.item(), rel=1e-9)
    ref = ReferenceStats.from_feats(b)
    assert per_sample_fad(a[:20].cuda(), ref).item() == pytest.approx(per_sample_fad(a[:20], ref).item(), rel=1e-9)

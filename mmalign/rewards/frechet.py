"""Fréchet distance between Gaussian fits of two feature sets (FID / FAD / FVD), FAD∞ and per-sample FAD.

``FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)``. pytorch-fid and fadtk (``calc_frechet_distance``)
take ``scipy.linalg.sqrtm(Σ₁Σ₂)`` and keep its trace. Only the trace is needed: ``Σᵢ √λᵢ`` over
the eigenvalues of ``Σ₁Σ₂``, which for PSD covariances are real, ≥ 0, and equal the non-zero
eigenvalues of a *symmetric* PSD matrix, so ``eigvalsh`` suffices (no Schur decomposition):

- ``Lᵀ Σ₂ L`` with ``Σ₁ = L Lᵀ`` (Cholesky) when ``Σ₁`` is positive definite, else ``Σ₁^½ Σ₂ Σ₁^½``
  with ``Σ₁^½`` from ``eigh`` (``[d, d]``);
- ``A Σ₂ Aᵀ`` with ``A`` the centred features of set 1 divided by ``√(N − 1)`` (``[N, N]``), used
  when ``N < d`` (per-sample FAD over a few dozen frames, small sets); when set 2 also has fewer
  than ``d`` rows, ``Σ₂`` stays factored (``(A Bᵀ)(A Bᵀ)ᵀ``) and no ``[d, d]`` matrix is formed.

Nothing is inverted, so rank-deficient covariances (``N ≤ d``) need no regularisation; eigenvalues
below ``n·ε·λ_max`` (round-off) count as 0, which keeps the zero eigenvalues of a singular
covariance from adding ``√ε``-sized terms (scipy's ``sqrtm`` carries that bias, ~1e-8 relative).
pytorch-fid's ``eps`` is kept as a fallback only: if an eigen-decomposition fails or gives
non-finite values, the square-root term is recomputed from ``Σ₁ + εI`` and ``Σ₂ + εI`` (the trace
terms keep the original covariances, as in pytorch-fid), with a warning. Computation is float64
by default (``dtype=``; float32 loses ~1e-4 relative) on the inputs' device; results keep that
dtype and are clamped at 0 (identical sets can otherwise come out at −1e-13).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from os import PathLike
from typing import Sequence, Union

import torch
from torch import Tensor

F64 = torch.float64


def _check_feats(feats: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    if not isinstance(feats, Tensor) or feats.dim() != 2:
        raise ValueError(f"{name}: expected a [N, d] tensor, got {getattr(feats, 'shape', type(feats))}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 rows, got {feats.shape[0]}")
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return feats.to(dtype)


def gaussian_stats(feats: Tensor, *, dtype: torch.dtype = F64) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of a feature set (as ``numpy.cov(feats, rowvar=False)``).

    Args:
        feats: ``[N, d]`` features, ``N ≥ 2``.
        dtype: computation and output dtype.

    Returns:
        ``mu [d]`` and ``sigma [d, d]``.
    """
    feats = _check_feats(feats, "feats", dtype)
    mu = feats.mean(0)
    centred = feats - mu
    return mu, centred.mT @ centred / (feats.shape[0] - 1)


def _clean(w: Tensor) -> Tensor:
    """Eigenvalues of a PSD matrix with round-off noise (``≤ n·ε·λ_max``) set to 0."""
    tol = w.amax(-1, keepdim=True).clamp_min(0) * w.shape[-1] * torch.finfo(w.dtype).eps
    return torch.where(w > tol, w, torch.zeros_like(w))


def _sum_sqrt_eigvalsh(m: Tensor) -> Tensor:
    """``Σ √λ`` over the eigenvalues of a (numerically) symmetric PSD matrix ``[..., n, n]``."""
    return _clean(torch.linalg.eigvalsh((m + m.mT) / 2)).sqrt().sum(-1)


def _psd_sqrt(sigma: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((sigma + sigma.mT) / 2)
    return (v * _clean(w).sqrt().unsqueeze(-2)) @ v.mT


def _trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """``Tr((Σ₁Σ₂)^½)``: ``Σ₁ = L Lᵀ`` (Cholesky, cheap) when it succeeds, else ``Σ₁^½`` from ``eigh``."""
    chol, info = torch.linalg.cholesky_ex(sigma1)
    if bool((info == 0).all()):
        return _sum_sqrt_eigvalsh(chol.mT @ sigma2 @ chol)
    root = _psd_sqrt(sigma1)
    return _sum_sqrt_eigvalsh(root @ sigma2 @ root)


def frechet_distance_from_stats(
    mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, eps: float = 1e-6, *, dtype: torch.dtype = F64
) -> Tensor:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Example: 1-D, ``N(0, 1)`` vs ``N(3, 4)`` → ``3² + (1 + 4 − 2·√4) = 10``.

    Args:
        mu1, mu2: ``[..., d]`` means.
        sigma1, sigma2: ``[..., d, d]`` covariances (symmetric PSD).
        eps: diagonal offset used only if the eigen-decomposition fails (see the module docstring).
        dtype: computation and output dtype.

    Returns:
        ``[...]`` distances (a scalar tensor for unbatched inputs), ≥ 0.
    """
    mu1, mu2 = mu1.to(dtype), mu2.to(device=mu1.device, dtype=dtype)
    sigma1, sigma2 = sigma1.to(device=mu1.device, dtype=dtype), sigma2.to(device=mu1.device, dtype=dtype)
    d = mu1.shape[-1]
    if mu2.shape[-1] != d or sigma1.shape[-2:] != (d, d) or sigma2.shape[-2:] != (d, d):
        raise ValueError(f"shape mismatch: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}")
    try:
        tr_sqrt = _trace_sqrt_product(sigma1, sigma2)
        ok = bool(torch.isfinite(tr_sqrt).all())
    except torch.linalg.LinAlgError:
        ok = False
    if not ok:
        warnings.warn(f"Fréchet distance: eigen-decomposition failed; adding {eps} to the covariance diagonals")
        offset = eps * torch.eye(d, dtype=dtype, device=mu1.device)
        tr_sqrt = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    diff = mu1 - mu2
    fd = (diff * diff).sum(-1) + sigma1.diagonal(0, -2, -1).sum(-1) + sigma2.diagonal(0, -2, -1).sum(-1)
    return (fd - 2 * tr_sqrt).clamp_min(0)


def _fd_feats_vs_stats(
    feats: Tensor, mu: Tensor, sigma: Tensor | None, eps: float, factor: Tensor | None = None
) -> Tensor:
    """FD of the Gaussian fit of checked ``feats [..., N, d]`` to ``(mu, Σ)``; ``Σ = sigma`` or ``factorᵀ factor``."""
    n, d = feats.shape[-2:]
    mu = mu.to(feats)
    mean = feats.mean(-2)
    centred = (feats - mean.unsqueeze(-2)) / math.sqrt(n - 1)
    ok = False
    if n < d:
        try:
            cross = centred @ factor.mT if factor is not None else None
            gram = cross @ cross.mT if factor is not None else centred @ sigma.to(feats) @ centred.mT
            tr_sqrt = _sum_sqrt_eigvalsh(gram)
            ok = bool(torch.isfinite(tr_sqrt).all())
        except torch.linalg.LinAlgError:
            pass
    if not ok:  # N ≥ d, or the eigen-decomposition failed: the stats route (with its eps fallback)
        sigma = factor.mT @ factor if sigma is None else sigma
        return frechet_distance_from_stats(mean, centred.mT @ centred, mu, sigma, eps, dtype=feats.dtype)
    diff = mean - mu
    tr_sigma = factor.square().sum() if factor is not None else sigma.to(feats).diagonal(0, -2, -1).sum(-1)
    fd = (diff * diff).sum(-1) + centred.square().sum((-2, -1)) + tr_sigma
    return (fd - 2 * tr_sqrt).clamp_min(0)


def frechet_distance(feats_a: Tensor, feats_b: Tensor, *, eps: float = 1e-6, dtype: torch.dtype = F64) -> Tensor:
    """Fréchet distance between the Gaussian fits of two feature sets (FID, FAD, FVD, ...).

    Args:
        feats_a: ``[N, d]`` features (e.g. Inception pool3, VGGish, CLAP, I3D embeddings).
        feats_b: ``[M, d]`` features.
        eps: see :func:`frechet_distance_from_stats`.
        dtype: computation and output dtype (float64 by default, on ``feats_a``'s device).

    Returns:
        Scalar tensor, ≥ 0; 0 for identical sets.
    """
    a = _check_feats(feats_a, "feats_a", dtype)
    b = _check_feats(feats_b, "feats_b", dtype).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: feats_a {tuple(a.shape)}, feats_b {tuple(b.shape)}")
    if a.shape[0] > b.shape[0]:
        a, b = b, a  # the distance is symmetric; the smaller set gets the [N, N] route when N < d
    (m, d), mean_b = b.shape, b.mean(0)
    if m < d:  # Σ_b stays factored: Tr((Σ_aΣ_b)^½) = ‖A Bᵀ‖_* with A, B centred and scaled
        return _fd_feats_vs_stats(a, mean_b, None, eps, factor=(b - mean_b) / math.sqrt(m - 1))
    return _fd_feats_vs_stats(a, *gaussian_stats(b, dtype=dtype), eps)


@dataclass
class ReferenceStats:
    """Gaussian statistics of a reference set: ``mu [d]``, ``sigma [d, d]``, ``n`` rows they came from.

    Stored as safetensors (tensors ``mu``/``sigma``, ``n`` in the metadata), never pickled.
    """

    mu: Tensor
    sigma: Tensor
    n: int

    def __post_init__(self):
        d = self.mu.shape[-1]
        if self.mu.dim() != 1 or self.sigma.shape != (d, d):
            raise ValueError(f"ReferenceStats: mu must be [d] and sigma [d, d], got {tuple(self.mu.shape)}, "
                             f"{tuple(self.sigma.shape)}")

    @classmethod
    def from_feats(cls, feats: Tensor, *, dtype: torch.dtype = F64) -> "ReferenceStats":
        """Statistics of ``feats [N, d]`` (see :func:`gaussian_stats`)."""
        return cls(*gaussian_stats(feats, dtype=dtype), n=int(feats.shape[0]))

    def to(self, device) -> "ReferenceStats":
        return ReferenceStats(self.mu.to(device), self.sigma.to(device), self.n)

    def save(self, path: Union[str, PathLike]) -> None:
        from safetensors.torch import save_file

        tensors = {"mu": self.mu.detach().cpu().contiguous(), "sigma": self.sigma.detach().cpu().contiguous()}
        save_file(tensors, str(path), metadata={"format": "mmalign.ReferenceStats", "n": str(self.n)})

    @classmethod
    def load(cls, path: Union[str, PathLike], device="cpu") -> "ReferenceStats":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta, keys = f.metadata() or {}, set(f.keys())
            if not {"mu", "sigma"} <= keys or "n" not in meta:
                raise ValueError(f"{path}: not a ReferenceStats file (tensors {sorted(keys)}, metadata {meta})")
            return cls(f.get_tensor("mu"), f.get_tensor("sigma"), int(meta["n"]))


RefLike = Union[ReferenceStats, tuple, Tensor]


def _ref_stats(ref: RefLike, sigma: Tensor | None, dtype: torch.dtype, feats_ok: bool = True):
    """``(mu, sigma)`` from a ReferenceStats, a ``(mu, sigma)`` pair, features, or ``ref`` = mu plus ``sigma``."""
    if sigma is None and isinstance(ref, Tensor) and not feats_ok:
        raise ValueError("pass ref_mu and ref_sigma, or a ReferenceStats as ref_mu")
    if sigma is not None:
        return ref.to(dtype), sigma.to(dtype)
    if isinstance(ref, ReferenceStats):
        return ref.mu.to(dtype), ref.sigma.to(dtype)
    if isinstance(ref, tuple):
        return ref[0].to(dtype), ref[1].to(dtype)
    return gaussian_stats(ref, dtype=dtype)


def per_sample_fad(
    frame_feats: Tensor, ref_mu: Union[Tensor, ReferenceStats], ref_sigma: Tensor | None = None,
    *, eps: float = 1e-6, dtype: torch.dtype = F64,
) -> Tensor:
    """FAD of one sample's frame embeddings against a reference set's statistics (fadtk ``--indiv``).

    Args:
        frame_feats: ``[T, d]`` frame-level embeddings of one sample (``T ≥ 2``).
        ref_mu: ``[d]`` reference mean, or a :class:`ReferenceStats` (then leave ``ref_sigma`` out).
        ref_sigma: ``[d, d]`` reference covariance.

    Returns:
        Scalar tensor (lower = closer to the reference distribution; use ``-fad`` as a reward).
    """
    mu, sigma = _ref_stats(ref_mu, ref_sigma, dtype, feats_ok=False)
    return _fd_feats_vs_stats(_check_feats(frame_feats, "frame_feats", dtype), mu, sigma, eps)


def per_sample_fad_batch(
    samples: Sequence[Tensor], ref_mu: Union[Tensor, ReferenceStats], ref_sigma: Tensor | None = None,
    *, eps: float = 1e-6, dtype: torch.dtype = F64,
) -> Tensor:
    """:func:`per_sample_fad` for each of ``B`` samples ``[T_i, d]``; equal ``T`` run as one batch.

    Returns:
        ``[B]`` per-sample FADs.
    """
    mu, sigma = _ref_stats(ref_mu, ref_sigma, dtype, feats_ok=False)
    feats = [_check_feats(s, f"samples[{i}]", dtype) for i, s in enumerate(samples)]
    if not feats:
        raise ValueError("samples is empty")
    if len({f.shape for f in feats}) == 1:
        return _fd_feats_vs_stats(torch.stack(feats), mu, sigma, eps)
    return torch.stack([_fd_feats_vs_stats(f, mu, sigma, eps) for f in feats])


@dataclass
class FADInfFit:
    """FAD∞ and its fit ``FAD(N) ≈ score + slope / N`` over ``points`` (``sizes [P]``, ``values [P]``)."""

    score: Tensor
    slope: Tensor
    r2: Tensor
    sizes: Tensor
    values: Tensor


def _fit_inverse_n(sizes: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares ``values ≈ a + b / sizes``; returns ``(a, b, r²)`` (``np.polyfit(1/n, v, 1)``)."""
    x, y = 1.0 / sizes.to(values), values
    xc, yc = x - x.mean(), y - y.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    intercept = y.mean() - slope * x.mean()
    ss_tot = (yc * yc).sum()
    ss_res = ((y - intercept - slope * x) ** 2).sum()
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else torch.ones_like(ss_tot)
    return intercept, slope, r2


def fad_inf(
    feats: Tensor, ref: RefLike, sizes: Sequence[int] | None = None, num_repeats: int = 1, *,
    generator: torch.Generator | None = None, replace: bool = True, return_fit: bool = False,
    eps: float = 1e-6, dtype: torch.dtype = F64,
) -> Union[Tensor, FADInfFit]:
    """FAD∞ (fadtk ``score_inf``): FAD of random subsets of several sizes, extrapolated to ``1/N → 0``.

    FAD is biased upwards by roughly ``b / N``; fitting ``FAD(N) = a + b/N`` over subsets and keeping
    ``a`` gives a score that does not depend on the evaluation-set size. As fadtk, subsets are drawn
    with replacement and the reference statistics are fixed; unlike fadtk (one draw per size)
    ``num_repeats`` draws per size all enter the least-squares fit.

    Args:
        feats: ``[N, d]`` evaluation features.
        ref: reference as :class:`ReferenceStats`, a ``(mu, sigma)`` pair or ``[M, d]`` features.
        sizes: subset sizes; default fadtk's 25 sizes evenly spaced from ``min(500, N // 2)`` to ``N``.
        num_repeats: random subsets per size.
        generator: for the subset draws (any device; indices move to ``feats``' device).
        replace: draw with replacement (fadtk) or not (then every size must be ≤ N).
        return_fit: return a :class:`FADInfFit` instead of the scalar.

    Returns:
        Scalar FAD∞ (the intercept, can be slightly negative), or the :class:`FADInfFit`.
    """
    x = _check_feats(feats, "feats", dtype)
    mu, sigma = _ref_stats(ref, None, dtype)
    n = x.shape[0]
    if sizes is None:
        sizes = [int(s) for s in torch.linspace(min(500, n // 2), n, 25).tolist()]
    sizes = sorted({int(s) for s in sizes})
    if len(sizes) < 2 or sizes[0] < 2 or (not replace and sizes[-1] > n):
        raise ValueError(f"fad_inf: need ≥ 2 distinct sizes in [2, {'∞' if replace else n}], got {sizes}")
    dev = generator.device if generator is not None else x.device
    points, values = [], []
    for size in sizes:
        for _ in range(num_repeats):
            if replace:
                idx = torch.randint(n, (size,), generator=generator, device=dev)
            else:
                idx = torch.randperm(n, generator=generator, device=dev)[:size]
            values.append(_fd_feats_vs_stats(x[idx.to(x.device)], mu, sigma, eps))
            points.append(size)
    sizes_t, values_t = torch.tensor(points, dtype=dtype, device=x.device), torch.stack(values)
    score, slope, r2 = _fit_inverse_n(sizes_t, values_t)
    return FADInfFit(score, slope, r2, sizes_t, values_t) if return_fit else score

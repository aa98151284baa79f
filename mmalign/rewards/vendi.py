"""Vendi score: the effective number of distinct samples in a set (Friedman & Dieng, 2023).

``VS = exp(−Σᵢ λᵢ log λᵢ)`` with ``λᵢ`` the eigenvalues of ``K / n`` for a PSD similarity matrix
``K [n, n]`` with ``k(x, x) = 1``; ``0 log 0 = 0``. The λᵢ sum to 1, so VS runs from 1 (all samples
identical) to ``n`` (all mutually orthogonal). Order ``q`` gives the Rényi variant
``VS_q = (Σ λᵢ^q)^{1/(1−q)}`` (``q = inf``: ``1 / max λ``), as the ``vendi_score`` package does.

Kernels on features ``[n, d]``:

- ``cosine``: ``K = X̂ X̂ᵀ`` with ``X̂`` the L2-normalised rows (the "linear kernel on normalised
  features" of the Vendi and dgm-eval code). When ``d < n`` the non-zero eigenvalues are taken from
  the ``[d, d]`` matrix ``X̂ᵀ X̂ / n`` instead (the package's ``score_dual``): same value, less work.
- ``rbf``: ``k(x, y) = exp(−‖x − y‖² / (2σ²))`` with ``σ = bandwidth``, or ``exp(−γ‖x − y‖²)`` when
  ``gamma`` is given (``γ = 1 / (2σ²)``). One of the two must be given: there is no default scale.

Eigenvalues are computed in float64 by default; negatives and values below ``n·ε·λ_max`` (round-off)
count as 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64


def _entropy_exp(lam: Tensor, q: float) -> Tensor:
    """``exp`` of the order-``q`` Rényi entropy of eigenvalues ``lam`` (summing to 1)."""
    tol = lam.max().clamp_min(0) * lam.numel() * torch.finfo(lam.dtype).eps
    lam = lam[lam > tol]
    if q == 1:
        return torch.exp(-(lam * lam.log()).sum())
    if math.isinf(q):
        return 1 / lam.max()
    return torch.exp(torch.log((lam**q).sum()) / (1 - q))


def vendi_score_from_kernel(K: Tensor, *, q: float = 1.0, dtype: torch.dtype = F64, check_diag: bool = True) -> Tensor:
    """Vendi score of a precomputed similarity matrix.

    Example: two unit vectors at cosine ``c`` have ``K/2 = [[1, c], [c, 1]] / 2`` with eigenvalues
    ``(1 ± c)/2``; ``c = 0`` gives ``exp(log 2) = 2``, ``c = 1`` gives 1.

    Args:
        K: ``[n, n]`` symmetric PSD similarity matrix with ones on the diagonal.
        q: order (1 = Shannon, the score of the paper; ``float('inf')`` allowed).
        dtype: computation and output dtype.
        check_diag: raise if the diagonal is not 1 (to 1e-3), which the score assumes.

    Returns:
        Scalar tensor in ``[1, n]``.
    """
    if K.dim() != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"K: expected a square [n, n] matrix, got {tuple(K.shape)}")
    if q < 0:
        raise ValueError(f"q must be ≥ 0, got {q}")
    K = K.to(dtype)
    if not torch.isfinite(K).all():
        raise ValueError("K: contains NaN or inf")
    if check_diag and not torch.allclose(K.diagonal(), torch.ones_like(K.diagonal()), atol=1e-3, rtol=0):
        raise ValueError("K: the Vendi score needs k(x, x) = 1 on the diagonal (normalise the kernel)")
    n = K.shape[0]
    return _entropy_exp(torch.linalg.eigvalsh((K + K.mT) / (2 * n)), q)


def vendi_score(
    feats: Tensor | None = None, *, kernel: str = "cosine", bandwidth: float | None = None,
    gamma: float | None = None, K: Tensor | None = None, q: float = 1.0, dtype: torch.dtype = F64,
) -> Tensor:
    """Vendi score of a set of features (or of a precomputed kernel ``K``).

    Args:
        feats: ``[n, d]`` features; leave out when ``K`` is given.
        kernel: ``"cosine"`` or ``"rbf"`` (see the module docstring).
        bandwidth: rbf ``σ`` in ``exp(−‖x − y‖² / (2σ²))``.
        gamma: rbf ``γ`` in ``exp(−γ‖x − y‖²)``; give ``bandwidth`` or ``gamma``, not both.
        K: ``[n, n]`` precomputed similarity matrix (see :func:`vendi_score_from_kernel`).
        q: order of the score (1 = the paper's).
        dtype: computation and output dtype (on ``feats``' device).

    Returns:
        Scalar tensor in ``[1, n]``: the effective number of distinct samples.
    """
    if K is not None:
        if feats is not None:
            raise ValueError("give feats or K, not both")
        return vendi_score_from_kernel(K, q=q, dtype=dtype)
    if feats is None or feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"feats: expected a [n, d] tensor, got {getattr(feats, 'shape', None)}")
    x = feats.to(dtype)
    if not torch.isfinite(x).all():
        raise ValueError("feats: contains NaN or inf")
    n, d = x.shape
    if kernel == "cosine":
        norms = x.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise ValueError("feats: a zero row has no direction; the cosine kernel needs k(x, x) = 1")
        x = x / norms
        gram = x.mT @ x if d < n else x @ x.mT  # same non-zero eigenvalues
        return _entropy_exp(torch.linalg.eigvalsh(gram / n), q)
    if kernel == "rbf":
        if (bandwidth is None) == (gamma is None):
            raise ValueError("rbf kernel: give exactly one of bandwidth (σ) or gamma (γ = 1/(2σ²))")
        g = gamma if gamma is not None else 1 / (2 * bandwidth**2)
        if not g > 0:
            raise ValueError(f"rbf kernel: gamma must be > 0, got {g}")
        sq = x.square().sum(1)
        dist2 = (sq[:, None] + sq[None, :] - 2 * x @ x.mT).clamp_min(0).fill_diagonal_(0)
        return vendi_score_from_kernel(torch.exp(-g * dist2), q=q, dtype=dtype)
    raise ValueError(f"kernel must be 'cosine' or 'rbf', got {kernel!r}")

"""DRAGON's distributional rewards: samples scored against an exemplar set, or by their effect on a
set metric, in the space of any embedder (CLIP, CLAP, a sentence encoder, a callable).

- **instance-to-distribution** (:class:`ExemplarReward`): each sample against the exemplars'
  embedding distribution -- kernel similarity, nearest-exemplar similarity, similarity to the
  exemplar centroid, or (negated) per-sample FAD of its frame embeddings against the exemplar
  statistics. The exemplars may be another modality: text captions through CLAP's text tower
  scoring audio through its audio tower.
- **distribution-to-distribution** (:class:`SetFADCredit`, :class:`VendiCredit`): each sample is
  credited with its leave-one-out effect on the batch's FAD to the exemplars or on its Vendi score.

The exemplar statistics (embeddings, mean, covariance) are computed once and cached in
safetensors next to the exemplars (or at ``cache``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from mmalign.registry import register
from mmalign.rewards.base import Reward
from mmalign.rewards.frechet import ReferenceStats, per_sample_fad, per_sample_fad_batch
from mmalign.rewards.vendi import vendi_score


def load_exemplar_items(source: str | Path, modality: str, sample_rate: int | None = None):
    """Exemplars from a text file (one caption per line, for text embedders), a JSONL of
    ``{"path"|"text": ...}`` or a folder of media; returns a list of strings or tensors."""
    from mmalign.recipes.score import load_item, read_items

    source = Path(source)
    if modality == "text" and source.suffix == ".txt":
        return [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return [load_item(it, modality, sample_rate) for it in read_items(source, modality, None)]


def embed_in_batches(embedder, items, *, batch_size: int = 32, sample_rate: int | None = None) -> torch.Tensor:
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        batch = chunk if isinstance(chunk[0], str) else torch.stack(chunk)
        with torch.no_grad():
            out.append(embedder.embed(batch, sample_rate=sample_rate).float().cpu())
    return torch.cat(out)


def exemplar_embeddings(embedder, source: str | Path, cache: str | Path | None, *, sample_rate=None) -> torch.Tensor:
    """``[M, d]`` exemplar embeddings, read from ``cache`` if it was made from the same source."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tag = json.dumps({"source": str(Path(source).resolve()), "embedder": getattr(embedder, "spec", repr(embedder))},
                     sort_keys=True, default=str)
    if cache is not None and Path(cache).is_file():
        with safe_open(str(cache), "pt") as fh:
            if (fh.metadata() or {}).get("tag") == tag:
                return fh.get_tensor("embeddings")
    items = load_exemplar_items(source, embedder.modality, sample_rate)
    if not items:
        raise ValueError(f"no exemplars in {source}")
    feats = embed_in_batches(embedder, items, sample_rate=sample_rate)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": feats.contiguous()}, str(cache), metadata={"tag": tag})
    return feats


def frame_embeddings(embedder, samples, sample_rate: int | None) -> torch.Tensor:
    """``[B, T, d]``: per-frame (video) or per-window (audio) embeddings of each sample."""
    if hasattr(embedder, "embed_windows"):
        return embedder.embed_windows(samples, sample_rate=sample_rate)
    return embedder.embed_frames(samples)


def kernel_similarity(x: torch.Tensor, exemplars: torch.Tensor, bandwidth: float | None) -> torch.Tensor:
    """Mean RBF kernel ``exp(−‖x − e‖² / (2h²))`` over the exemplars, ``[N]``; h defaults to the
    median pairwise exemplar distance (the median heuristic)."""
    d2 = torch.cdist(x.double(), exemplars.double()).pow(2)
    if bandwidth is None:
        pair = torch.pdist(exemplars.double())
        bandwidth = float(pair.median()) if pair.numel() else 1.0
    return torch.exp(-d2 / (2 * bandwidth**2)).mean(1).float()


@register("reward", "exemplar")
class ExemplarReward(Reward):
    """DRAGON instance-to-distribution reward: similarity of each sample to an exemplar set (any embedder)."""

    def __init__(
        self,
        embedder: dict,
        exemplars: str,
        mode: Literal["kernel", "nearest", "centroid", "per_sample_fad"] = "kernel",
        exemplar_embedder: dict | None = None,
        bandwidth: float | None = None,
        k: int = 1,
        cache: str | None = None,
    ):
        """
        Args:
            embedder: embedder of the samples, e.g. ``{type: clap_audio, model: ...}``.
            exemplars: folder / JSONL of exemplar media, or a .txt of captions for text exemplars.
            mode: ``kernel`` (mean RBF similarity), ``nearest`` (mean cosine to the k nearest
                exemplars), ``centroid`` (cosine to the exemplar mean), ``per_sample_fad``
                (−FAD of the sample's frame embeddings against the exemplars' statistics).
            exemplar_embedder: embedder of the exemplars when they are another modality (e.g.
                ``{type: clap_text}`` for captions against ``clap_audio`` samples); same space.
            bandwidth: RBF bandwidth for ``kernel`` (default: median exemplar distance).
            k: neighbours for ``nearest``.
            cache: safetensors file for the exemplar embeddings (default: none).
        """
        from mmalign.rewards.embedders import build_embedder

        self.embedder = build_embedder(embedder)
        ex_embedder = build_embedder(exemplar_embedder) if exemplar_embedder else self.embedder
        self.modality = self.embedder.modality
        self.dims = (f"exemplar_{mode}",)
        self.mode, self.bandwidth, self.k = mode, bandwidth, k
        if mode == "per_sample_fad" and not hasattr(self.embedder, "embed_frames") and not hasattr(self.embedder, "embed_windows"):
            raise ValueError("per_sample_fad needs frame-level embeddings (a video or audio embedder)")
        self.exemplars = exemplar_embeddings(ex_embedder, exemplars, cache)
        self.stats = ReferenceStats.from_feats(self.exemplars) if mode == "per_sample_fad" else None

    def forward(self, samples, prompts=None, *, sample_rate=None):
        if self.mode == "per_sample_fad":
            frames = frame_embeddings(self.embedder, samples, sample_rate).float().cpu()  # [B, T, d]
            return -per_sample_fad_batch(list(frames), self.stats.mu, self.stats.sigma).float()[:, None]
        x = self.embedder.embed(samples, sample_rate=sample_rate).float().cpu()
        ex = self.exemplars
        if self.mode == "kernel":
            score = kernel_similarity(x, ex, self.bandwidth)
        elif self.mode == "nearest":
            cos = F.normalize(x, dim=-1) @ F.normalize(ex, dim=-1).T
            score = cos.topk(min(self.k, ex.shape[0]), dim=1).values.mean(1)
        else:
            score = F.cosine_similarity(x, ex.mean(0, keepdim=True), dim=-1)
        return score[:, None]


@register("reward", "set_fad_credit")
class SetFADCredit(Reward):
    """DRAGON distribution-to-distribution reward: each sample's leave-one-out effect on the batch's FAD to the exemplars."""

    def __init__(self, embedder: dict, exemplars: str, exemplar_embedder: dict | None = None,
                 cache: str | None = None, eps: float = 1e-6):
        """``credit_i = FAD(batch \\ {i}) − FAD(batch)``: positive when sample i pulls the batch
        toward the exemplars. Costs one d×d eigendecomposition per sample."""
        from mmalign.rewards.embedders import build_embedder

        self.embedder = build_embedder(embedder)
        ex_embedder = build_embedder(exemplar_embedder) if exemplar_embedder else self.embedder
        self.modality, self.dims, self.eps = self.embedder.modality, ("fad_credit",), eps
        self.stats = ReferenceStats.from_feats(exemplar_embeddings(ex_embedder, exemplars, cache))

    def forward(self, samples, prompts=None, *, sample_rate=None):
        x = self.embedder.embed(samples, sample_rate=sample_rate).double().cpu()
        if x.shape[0] < 3:
            raise ValueError("set_fad_credit needs batches of at least 3 samples")
        # FAD of a set against the exemplar statistics is per_sample_fad of its rows; the leave-one-out
        # sets have equal sizes, so they run as one batched call on batch-sized matrices.
        total = per_sample_fad(x, self.stats, eps=self.eps)
        without = per_sample_fad_batch([torch.cat([x[:i], x[i + 1:]]) for i in range(x.shape[0])], self.stats, eps=self.eps)
        return (without - total).float()[:, None]


@register("reward", "vendi_credit")
class VendiCredit(Reward):
    """DRAGON distribution-to-distribution reward: each sample's leave-one-out contribution to the batch's Vendi score."""

    def __init__(self, embedder: dict, kernel: Literal["cosine", "rbf"] = "cosine", bandwidth: float | None = None):
        """``credit_i = Vendi(batch) − Vendi(batch \\ {i})``: positive when sample i adds diversity.
        ``bandwidth``: σ of the rbf kernel (required for ``rbf``)."""
        from mmalign.rewards.embedders import build_embedder

        if kernel == "rbf" and bandwidth is None:
            raise ValueError("vendi_credit: the rbf kernel needs a bandwidth")
        self.embedder = build_embedder(embedder)
        self.modality, self.dims, self.kernel = self.embedder.modality, ("vendi_credit",), kernel
        self.kw = {"bandwidth": bandwidth} if kernel == "rbf" else {}

    def forward(self, samples, prompts=None, *, sample_rate=None):
        x = self.embedder.embed(samples, sample_rate=sample_rate).double().cpu()
        if x.shape[0] < 2:
            raise ValueError("vendi_credit needs batches of at least 2 samples")
        total = vendi_score(x, kernel=self.kernel, **self.kw)
        without = [vendi_score(torch.cat([x[:i], x[i + 1:]]), kernel=self.kernel, **self.kw) for i in range(x.shape[0])]
        return (total - torch.stack(without)).float()[:, None]

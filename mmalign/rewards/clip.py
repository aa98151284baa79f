"""CLIP score: how well an image (or video) matches its prompt, from an open_clip model.

``clip_score = scale · cos(E_img(x), E_txt(prompt))`` with both embeddings L2-normalised; ``scale``
is 100 (torchmetrics' ``CLIPScore``, which then clamps at 0: ``clamp_zero=True``) or the model's
learned ``logit_scale``. Hessel et al. (2021) use ``2.5 · max(cos, 0)``: ``scale=2.5, clamp_zero=True``.
For videos the score is the mean over frames of the per-frame scores (CLIPSIM).

Preprocessing runs in torch on the [-1, 1] samples (:func:`~mmalign.rewards.embedders.clip_preprocess`),
so the score is differentiable w.r.t. the pixels (reward guidance); ``clamp_zero`` zeroes the
gradient of samples that score below 0.
"""

from __future__ import annotations

from typing import Literal

import torch

from mmalign import registry
from mmalign.rewards.base import Reward
from mmalign.rewards.embedders import (OpenCLIPImageEmbedder, OpenCLIPTextEmbedder, check_media, logit_scale,
                                       match_prompts)


class PromptCache:
    """Prompt embeddings computed once per string (guidance scores the same prompts every step)."""

    def __init__(self, embedder, max_size: int = 4096):
        self.embedder, self.max_size, self.store = embedder, max_size, {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.store]
        if missing:
            if len(self.store) + len(missing) > self.max_size:
                self.store.clear()
            self.store.update(zip(missing, self.embedder.embed(missing)))
        return torch.stack([self.store[p] for p in prompts])

    def clear(self) -> None:
        self.store.clear()


@registry.register("reward", "clip_score")
class CLIPScore(Reward):
    """CLIP score ``scale · cos(image, prompt)`` (video: mean over frames); differentiable."""

    dims = ("clip_score",)
    differentiable = True

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai",
                 scale: float | Literal["logit_scale"] = 100.0, modality: Literal["image", "video"] = "image",
                 clamp_zero: bool = False, device: str | None = None, dtype: str | None = None):
        """
        Args:
            model: open_clip config name (``open_clip.list_models()``), ``hf-hub:`` or ``local-dir:`` id.
            pretrained: open_clip weights tag or checkpoint path (``None``: random weights, for tests).
            scale: multiplier of the cosine, or ``"logit_scale"`` for the model's learned temperature.
            modality: ``image`` (``[B, 3, H, W]``) or ``video`` (``[B, 3, F, H, W]``), in [-1, 1].
            clamp_zero: ``max(score, 0)`` as torchmetrics does.
            device, dtype: where and in which dtype the frozen CLIP runs (default: cuda if present, fp32).
        """
        self.image = OpenCLIPImageEmbedder(model, pretrained, modality=modality, device=device, dtype=dtype)
        self.text = OpenCLIPTextEmbedder(model, pretrained, device=device, dtype=dtype)
        self.prompts = PromptCache(self.text)
        self.modality, self.clamp_zero = modality, clamp_zero
        self.scale = logit_scale(self.image.model) if scale == "logit_scale" else float(scale)

    def forward(self, samples, prompts=None, *, sample_rate=None):
        if self.modality == "video":
            emb = self.image.embed_frames(samples)  # [B, F, d]
        else:
            emb = self.image.embed_images(check_media(samples, "image"))[:, None]  # [B, 1, d]
        text = self.prompts(match_prompts(prompts, emb.shape[0], "clip_score")).to(emb.device)
        score = self.scale * (emb * text[:, None]).sum(-1).mean(1)
        return (score.clamp(min=0) if self.clamp_zero else score)[:, None]

    def to(self, device) -> "CLIPScore":
        self.image.to(device)
        self.prompts.clear()
        return self

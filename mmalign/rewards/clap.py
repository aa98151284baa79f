"""CLAP score: how well audio matches its prompt, from a CLAP model.

``clap_score = scale · cos(E_audio(x), E_text(prompt))``, both L2-normalised; ``scale`` is 100 (as
the CLIP score) or the model's learned ``logit_scale``. Audio ``[B, C, T]`` at ``sample_rate`` is
mixed to mono and resampled to the model's rate (48 kHz for the LAION checkpoints) with
``torchaudio.functional.resample``; clips shorter than 10 s are repeat-padded, longer ones are cut
into 10 s clips whose embeddings are averaged (:class:`~mmalign.rewards.embedders.CLAPAudioEmbedder`).

Backends (``backend=``): ``transformers`` (``ClapModel``; default ``laion/clap-htsat-unfused``),
``open_clip`` (its ``CLAP-*`` configs, not in open_clip releases up to 3.3) and ``laion_clap``
(optional extra ``mmalign[clap]``; reaches the hub on import unless ``HF_HOME`` holds a cache).
All three compute the log-mel in torch, so the score is differentiable w.r.t. the waveform.
"""

from __future__ import annotations

from typing import Literal

from mmalign import registry
from mmalign.rewards.base import Reward
from mmalign.rewards.clip import PromptCache
from mmalign.rewards.embedders import CLAPAudioEmbedder, CLAPTextEmbedder, logit_scale, match_prompts


@registry.register("reward", "clap_score")
class CLAPScore(Reward):
    """CLAP score ``scale · cos(audio, prompt)`` at the model's sample rate; differentiable."""

    dims = ("clap_score",)
    modality = "audio"
    differentiable = True

    def __init__(self, model: str | None = None, pretrained: str | None = None,
                 backend: Literal["transformers", "open_clip", "laion_clap"] = "transformers",
                 scale: float | Literal["logit_scale"] = 100.0, clamp_zero: bool = False,
                 enable_fusion: bool = False, device: str | None = None, dtype: str | None = None):
        """
        Args:
            model: checkpoint: a hub id or directory (transformers; default ``laion/clap-htsat-unfused``),
                an open_clip config name (default ``CLAP-HTSAT-tiny-Roberta-base``) or a laion_clap
                audio model name (default ``HTSAT-tiny``).
            pretrained: open_clip weights tag (``laion``) or laion_clap ``.pt`` checkpoint; ``None``
                leaves those two backends random. Unused by transformers (``model`` is the checkpoint).
            backend: ``transformers``, ``open_clip`` or ``laion_clap``.
            scale: multiplier of the cosine, or ``"logit_scale"`` for the model's learned temperature.
            clamp_zero: ``max(score, 0)``.
            enable_fusion: laion_clap's fusion model (the other backends read it from the checkpoint).
            device, dtype: where and in which dtype the frozen model runs (default: cuda if present, fp32).
        """
        self.audio = CLAPAudioEmbedder(model, pretrained, backend=backend, device=device, dtype=dtype,
                                       enable_fusion=enable_fusion)
        self.text = CLAPTextEmbedder(model, pretrained, backend=backend, device=device, dtype=dtype,
                                     enable_fusion=enable_fusion)
        self.prompts = PromptCache(self.text)
        self.sample_rate = self.audio.sample_rate
        self.clamp_zero = clamp_zero
        self.scale = logit_scale(self.audio.model) if scale == "logit_scale" else float(scale)

    def forward(self, samples, prompts=None, *, sample_rate=None):
        emb = self.audio.embed(samples, sample_rate=sample_rate)
        text = self.prompts(match_prompts(prompts, emb.shape[0], "clap_score")).to(emb.device)
        score = self.scale * (emb * text).sum(-1)
        return (score.clamp(min=0) if self.clamp_zero else score)[:, None]

    def to(self, device) -> "CLAPScore":
        self.audio.to(device)
        self.prompts.clear()
        return self

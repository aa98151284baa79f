"""Alignment gym worlds: small generators with a known ground-truth preference.

A world bundles what an end-to-end measurement needs:

- a small pretrained **base generator** shipped under ``assets/gym/<world>/base`` and loaded
  through the ordinary ``pretrained:`` path (a diffusers pipeline or a transformers causal LM);
- **prompts** for training and held-out evaluation;
- a **ground-truth reward** with named dimensions (a :class:`~mmalign.rewards.base.Reward`,
  registered as ``gym_<world>``), which the simulated annotator and the evaluation read;
- **features** of samples for the diversity figure (Vendi).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmalign.rewards.base import Reward

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "gym"
WORLDS: dict[str, type["World"]] = {}


def register_world(cls: type["World"]) -> type["World"]:
    WORLDS[cls.name] = cls
    return cls


def get_world(name: str) -> "World":
    from mmalign.registry import ConfigError, nearest

    if name not in WORLDS:
        raise ConfigError(f"unknown gym world {name!r}{nearest(name, WORLDS)} (worlds: {', '.join(sorted(WORLDS))})")
    return WORLDS[name]()


class World:
    """Subclasses set the class attributes and implement the methods below."""

    name: str = ""
    modality: str = "image"  # image | video | audio | text
    dims: tuple[str, ...] = ()
    # keyword arguments for sampling the base pipeline (height, width, num_frames, steps, guidance...)
    sample_kwargs: dict = {}

    @property
    def base_path(self) -> Path:
        return ASSETS / self.name / "base"

    def prompts(self, split: str, n: int | None = None, seed: int = 0) -> list[str]:
        """Prompts of ``split`` ("train" or "eval"; disjoint), optionally ``n`` of them, seeded."""
        raise NotImplementedError

    def reward(self) -> Reward:
        """The ground-truth reward: ``[B, len(dims)]``, higher is better on every dimension."""
        raise NotImplementedError

    def features(self, samples) -> torch.Tensor:
        """``[B, d]`` features for the diversity (Vendi) figure."""
        raise NotImplementedError

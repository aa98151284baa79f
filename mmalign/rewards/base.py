"""The reward contract shared by every modality, and reward composition.

A reward maps a batch of samples (and their prompts) to a ``[B, D]`` tensor whose columns are
named by ``dims``. Samples come as the media loaders give them (:mod:`mmalign.data.media`):

| modality | samples |
|---|---|
| image | ``[B, 3, H, W]`` float in [-1, 1] |
| video | ``[B, 3, F, H, W]`` float in [-1, 1] |
| audio | ``[B, C, T]`` float in [-1, 1], at ``sample_rate`` |
| text  | ``list[str]`` |

Rewards compose: :class:`Composite` concatenates the dimensions of several rewards (prefixed by
their names) and :func:`weighted_sum` turns ``[B, D]`` into ``[B]`` with per-dimension weights
chosen at use time.
"""

from __future__ import annotations

from typing import Any

import torch

from mmalign import registry
from mmalign.registry import ConfigError


class Reward:
    """Base class: subclasses set ``dims`` and ``modality`` and implement :meth:`forward`.

    ``differentiable`` says whether gradients flow from the output to image/video/audio samples
    (reward guidance needs it); rewards run under ``torch.no_grad`` otherwise.
    """

    dims: tuple[str, ...] = ("reward",)
    modality: str = "image"
    differentiable: bool = False

    def forward(self, samples: Any, prompts: list[str] | None = None, *, sample_rate: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, samples: Any, prompts: list[str] | None = None, *, sample_rate: int | None = None) -> torch.Tensor:
        out = self.forward(samples, prompts, sample_rate=sample_rate)
        if out.dim() != 2 or out.shape[1] != len(self.dims):
            raise RuntimeError(f"{type(self).__name__} returned shape {tuple(out.shape)}, expected [B, {len(self.dims)}]")
        return out

    def to(self, device) -> "Reward":
        for value in vars(self).values():
            if isinstance(value, (torch.nn.Module, Reward)):
                value.to(device)
        return self


def weighted_sum(rewards: torch.Tensor, dims: tuple[str, ...], weights: dict[str, float] | None = None) -> torch.Tensor:
    """``[B, D]`` → ``[B]``: ``Σ_d w_d r_d``; ``weights=None`` sums every dimension with weight 1.

    Example: dims (TA, VQ), rewards [[1, 2]], weights {TA: 0.5} → [0.5].
    """
    if rewards.dim() == 1:
        return rewards
    if weights is None:
        return rewards.sum(-1)
    unknown = set(weights) - set(dims)
    if unknown:
        raise ValueError(f"reward weights name unknown dimensions {sorted(unknown)}; the reward has {list(dims)}")
    w = torch.tensor([weights.get(d, 0.0) for d in dims], dtype=rewards.dtype, device=rewards.device)
    return rewards @ w


@registry.register("reward", "composite")
class Composite(Reward):
    """Several rewards side by side: dims are '<name>/<dim>', e.g. clip/clip_score, rm/VQ."""

    def __init__(self, rewards: dict[str, dict], weights: dict[str, float] | None = None):
        """
        Args:
            rewards: ``{name: reward config section}`` (each with its own ``name:`` key... as
                ``{name: {name: clip_score, ...}}``).
            weights: default per-dimension weights for :meth:`total` (``<name>/<dim>`` keys).
        """
        from mmalign.config import validate_component

        self.parts: dict[str, Reward] = {}
        for key, section in rewards.items():
            if isinstance(section, dict) and section.get("name") == "composite":
                raise ConfigError(f"reward.rewards.{key}: composites do not nest")
            self.parts[key] = registry.build("reward", validate_component("reward", section, f"reward.rewards.{key}"))
        modalities = {p.modality for p in self.parts.values()}
        if len(modalities) > 1:
            raise ConfigError(f"reward.rewards: parts score different modalities {sorted(modalities)}")
        self.modality = modalities.pop() if modalities else "image"
        self.dims = tuple(f"{key}/{d}" for key, part in self.parts.items() for d in part.dims)
        self.differentiable = all(p.differentiable for p in self.parts.values())
        self.weights = weights
        if weights is not None:
            weighted_sum(torch.zeros(1, len(self.dims)), self.dims, weights)  # unknown names fail now

    def forward(self, samples, prompts=None, *, sample_rate=None):
        return torch.cat([part(samples, prompts, sample_rate=sample_rate) for part in self.parts.values()], dim=1)

    def total(self, rewards: torch.Tensor, weights: dict[str, float] | None = None) -> torch.Tensor:
        return weighted_sum(rewards, self.dims, weights if weights is not None else self.weights)

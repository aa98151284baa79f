"""Rewards and metrics shared by every modality (``reward:`` section).

The contract (../shared/DESIGN.md): a reward maps samples and their conditioning to a ``[B, D]``
tensor with named dimensions ``dims``. Reward models, CLIP/CLAP scores, Fréchet distances and Vendi
land here with the reward-modeling issue; recipes that score samples build them through the registry.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Reward(Protocol):
    dims: tuple[str, ...]

    def __call__(self, samples: Any, cond: Any) -> torch.Tensor:
        """``[B, D]`` rewards, one column per name in ``dims``."""

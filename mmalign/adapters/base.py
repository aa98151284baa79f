"""The contract every modality adapter meets (see ../shared/DESIGN.md)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class LoraSettings:
    """LoRA through peft. The reference model is the same network with the adapters disabled."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer trains (LoRA weights, heads, or everything), detached."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's trainable parameters into ``model``; a mismatch names the keys."""
    own = dict(model.named_parameters())
    missing = [k for k, p in own.items() if p.requires_grad and k not in state]
    unknown = [k for k in state if k not in own]
    if missing or unknown:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unknown[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


class RewardModelState:
    """What every trainable reward model (text, VLM, embedding, noisy-latent) shares as an adapter of
    the ``reward_model``-style recipes: no reference model, and a state made of the trainable
    parameters of ``self.model``."""

    model: nn.Module

    def reference(self):
        raise RuntimeError("reward models have no reference model")

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self.model)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state_dict(self.model, state)


class ModalityAdapter(Protocol):
    """Turns a batch into one score per item; the objectives never see the model."""

    module: nn.Module  # what the optimizer trains (replaced by its accelerate-wrapped form)

    def encode(self, record: Any) -> dict:
        """Pre-process one validated record (tokenize, load media); may raise DataError."""

    def collate(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        """Stack encoded records into a batch laid out ``[chosen; rejected]``."""

    def prepare(self, batch: dict, generator: torch.Generator | None) -> dict:
        """Draw what policy and reference must share (noise, timesteps); ``{}`` for LMs."""

    def score(self, batch: dict, aux: dict) -> torch.Tensor:
        """``[2B]`` surrogate log-likelihoods, chosen first."""

    def reference(self) -> AbstractContextManager:
        """Within this context :meth:`score` uses the reference model."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def save_pretrained(self, path: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The final artifact, in the form its ecosystem loads (PEFT adapter or full weights)."""

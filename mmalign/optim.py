"""Registered optimizers (``optim:`` section) and the learning-rate schedule."""

from __future__ import annotations

from typing import Iterable

import torch

from mmalign.registry import register


@register("optim", "adamw", runtime_args=("params",))
def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """AdamW (torch.optim.AdamW); the usual choice for DPO and LoRA."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@register("optim", "sgd", runtime_args=("params",))
def sgd(
    params: Iterable[torch.nn.Parameter], lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD with optional momentum (torch.optim.SGD)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(optimizer, name: str, *, warmup_steps: int, total_steps: int):
    """Linear warmup then ``cosine`` / ``linear`` decay to 0, or ``constant`` (transformers' schedules)."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(name, name)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)

"""What the gym worlds' build scripts (``examples/build_gym_*.py``) share: thread limits, a fresh
output folder that replaces the old one only when the build completes, and the EMA training step
of their denoisers."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn


def limit_threads(threads: int) -> None:
    """``threads`` torch threads and one BLAS thread: on a small machine BLAS threads starve torch's."""
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def fresh_build_dir(out: str | Path) -> Path:
    """An empty ``OUT.tmp`` next to ``out``; the script renames it to ``out`` once everything is written."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def train_step(loss: torch.Tensor, trained: nn.Module, ema: nn.Module, opt, sched, step: int, *,
               max_decay: float, clip: float = 1.0) -> None:
    """Backward, clip, optimizer and scheduler step, then the EMA copy with the warm-up decay
    ``min(max_decay, (1 + step) / (10 + step))``."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), clip)
    opt.step()
    sched.step()
    decay = min(max_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), trained.parameters()):
            pe.lerp_(p, 1 - decay)

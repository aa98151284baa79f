"""What the gym worlds' build scripts (``examples/build_gym_*.py``) share: thread limits, timed log
lines, the judge's held-out split, a fresh output folder that replaces the old one only when the
build completes, and the EMA training step of their denoisers."""

from __future__ import annotations

import json
import shutil
import time
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


def log(msg: str, t0: float) -> None:
    """``[  12.3s] msg``: seconds since ``t0``."""
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def holdout_split(n: int, g: torch.Generator, share: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(held_out, train)`` indices of ``n`` items: a ``share`` drawn with ``g`` for the judge's accuracy."""
    perm = torch.randperm(n, generator=g)
    n_hold = int(share * n)
    return perm[:n_hold], perm[n_hold:]


def fresh_build_dir(out: str | Path) -> Path:
    """An empty ``OUT.tmp`` next to ``out``; the script renames it to ``out`` once everything is written."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_build(tmp: Path, out: str | Path, report: dict, t0: float) -> None:
    """Write ``build.json`` (with the build time) into ``tmp`` and swap it in for ``out``."""
    out = Path(out)
    report["build_seconds"] = round(time.time() - t0, 1)
    (tmp / "build.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    log(f"done: {out}", t0)


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

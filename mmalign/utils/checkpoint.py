"""Atomic, pickle-free training checkpoints.

A checkpoint is a directory ``checkpoints/step-00000012/`` holding safetensors for the trainable
weights, the optimizer tensors and each rank's RNG, plus JSON for everything else. It is written
under a temporary name and renamed into place, so a run killed mid-write leaves no directory
that looks complete; :func:`latest_checkpoint` only returns renamed ones. Nothing here unpickles.

(accelerate's ``save_state`` pickles the optimizer and RNG with ``torch.save``; we write our own
to keep checkpoints loadable without unpickling untrusted files.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (renamed into place and holding ``state.json``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------- optimizer <-> safetensors


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": _plain(state["param_groups"]), "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# --------------------------------------------------------------------------- save / load


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def tmp_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f".tmp-step-{step:08d}"


def start_checkpoint(accelerator, root: str | Path, index: int) -> tuple[Path, Path]:
    """Begin checkpoint ``index`` on every rank: a fresh temporary folder (a torn one left by a killed
    run is removed) holding each rank's RNG state. Returns ``(tmp, final)``; the main process then
    adds the shared files (:func:`write_checkpoint`) and :func:`commit` renames ``tmp`` to ``final``."""
    import shutil

    tmp, final = tmp_dir(root, index), checkpoint_dir(root, index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    write_rng(tmp, accelerator.process_index)
    return tmp, final


def write_checkpoint(
    tmp: Path,
    *,
    trainable: dict[str, torch.Tensor] | None,
    optimizer: dict | None,
    scheduler: dict,
    state: dict,
) -> None:
    """Write the shared (main-process) files into ``tmp``; ranks add ``rng-rank{r}`` themselves.
    ``trainable``/``optimizer`` are None when a sharding engine saved its own state."""
    if trainable is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_to_files(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    (tmp / "scheduler.json").write_text(json.dumps(_plain(scheduler)))
    # state.json is written last: its presence marks the content complete.
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))


def write_rng(tmp: Path, rank: int) -> None:
    save_file(rng_state(), str(tmp / f"rng-rank{rank}.safetensors"))


def commit(tmp: Path, final: Path, keep_last: int | None = None) -> None:
    """Rename ``tmp`` to ``final`` (atomic on one filesystem), then prune old checkpoints."""
    for fh in tmp.iterdir():  # flush file contents before the rename makes them visible
        if fh.is_file():
            with open(fh, "rb") as f:
                os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for _, old in list_checkpoints(final.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(path: Path, rank: int) -> dict[str, Any]:
    rng_file = path / f"rng-rank{rank}.safetensors"
    has_weights = (path / "trainable.safetensors").is_file()
    return {
        "trainable": load_file(str(path / "trainable.safetensors")) if has_weights else None,
        "optimizer": optimizer_from_files(
            load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text())
        ) if has_weights else None,
        "scheduler": json.loads((path / "scheduler.json").read_text()),
        "state": json.loads((path / STATE_FILE).read_text()),
        "rng": load_file(str(rng_file)) if rng_file.is_file() else None,
    }

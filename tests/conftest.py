"""Shared fixtures: tiny models and tokenizers built locally, generated data, no network."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A random tiny Llama with a locally trained byte-level BPE tokenizer, saved like a hub model."""
    from mmalign.utils.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory):
    """``get(name) -> Path`` of a tiny diffusers pipeline (sd3, flux, wan, ltx, stable_audio, ...; see
    :mod:`mmalign.utils.tiny_diffusers`), built on first use and shared by the whole session."""
    from mmalign.utils.tiny_diffusers import build_tiny_pipeline

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_tiny_pipeline(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


def arithmetic_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        wrong = a + b + rng.choice([-2, -1, 1, 2])
        rows.append({"prompt": f"Question: what is {a} plus {b}? Answer:", "chosen": f" {a + b}", "rejected": f" {wrong}"})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(48))


@pytest.fixture
def make_config(tmp_path, tiny_lm_dir, pairs_file):
    """Write a tiny offline_preference config; keyword arguments update its sections."""

    def make(name: str = "run.yaml", **sections) -> Path:
        cfg = {
            "recipe": "offline_preference",
            "seed": 0,
            "output_dir": str(tmp_path / "out"),
            "adapter": {"name": "causal_lm", "pretrained": str(tiny_lm_dir), "lora": {"r": 4, "alpha": 8}},
            "objective": {"name": "dpo", "beta": 0.1},
            "data": {"name": "preference_pairs", "path": str(pairs_file), "eval_fraction": 0.25},
            "optim": {"name": "adamw", "lr": 1e-2},
            "train": {"max_steps": 4, "batch_size": 4, "progress": False, "plot": False},
            "accelerate": {"log_with": []},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide singletons; reset them so each test builds its own."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()

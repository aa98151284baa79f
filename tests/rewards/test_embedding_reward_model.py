import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmalign.cli import main
from mmalign.registry import build
from mmalign.utils.metrics import read_metrics

from .test_clip_clap import register_tiny_clip


def bright_dark_pairs(root, n, seed):
    """Chosen images are brighter than rejected ones (dimension 'bright'); texture is random."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for name, lo, hi in (("c", 150, 255), ("r", 0, 105)):
            Image.fromarray(rng.integers(lo, hi, (32, 32, 3), dtype=np.uint8)).save(root / f"{seed}_{i}{name}.png")
        rows.append({"prompt": "a bright photo", "chosen": f"{seed}_{i}c.png", "rejected": f"{seed}_{i}r.png"})
    path = root / f"pairs{seed}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_clip_reward_model_learns_brightness_via_cli(tmp_path):
    model = register_tiny_clip()
    train, held = bright_dark_pairs(tmp_path, 48, 0), bright_dark_pairs(tmp_path, 24, 1)
    cfg = {
        "recipe": "reward_model", "output_dir": str(tmp_path / "rm"),
        "adapter": {"name": "embedding_reward_model", "dims": ["bright"], "hidden": 32,
                    "embedder": {"type": "clip_image", "model": model, "device": "cpu"},
                    "text_embedder": {"type": "clip_text", "model": model, "device": "cpu"}},
        "objective": {"name": "bradley_terry"},
        "data": {"name": "preference_pairs", "path": str(train), "eval_path": str(held)},
        "optim": {"name": "adamw", "lr": 1e-2},
        "train": {"max_steps": 40, "batch_size": 16, "eval_every": 20, "progress": False, "lr_scheduler": "constant"},
        "accelerate": {"log_with": []},
    }
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    final = [r for r in read_metrics(tmp_path / "rm" / "metrics.jsonl") if r["split"] == "eval"][-1]
    assert final["accuracy/bright"] >= 0.95, final
    reward = build("reward", {"name": "reward_model", "path": str(tmp_path / "rm" / "final"), "device": "cpu"})
    assert reward.modality == "image" and reward.dims == ("bright",)
    light, dark = torch.full((1, 3, 32, 32), 0.8), torch.full((1, 3, 32, 32), -0.8)
    scores = reward(torch.cat([light, dark]), ["a bright photo"] * 2)
    assert scores[0, 0] > scores[1, 0]

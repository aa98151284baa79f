import json
import random

import pytest
import torch
import yaml

from mmalign.cli import main
from mmalign.config import load_config
from mmalign.data import validate_record
from mmalign.data.pairs import DataError
from mmalign.registry import build
from mmalign.rewards.reward_model import label_vector
from mmalign.utils.metrics import read_metrics

from ..conftest import write_jsonl

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "light", "paper"]


def separable_pairs(n: int, seed: int) -> list[dict]:
    """Two dimensions: 'polite' (chosen says 'please') and 'short' (fewer words wins, equal = tie)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        body = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))
        a, b = rng.randint(1, 3), rng.randint(1, 3)
        chosen, rejected = f"please {body(a)}", f"no {body(b)}"
        short = "tie" if a == b else ("chosen" if a < b else "rejected")
        rows.append({"prompt": "Answer:", "chosen": chosen, "rejected": rejected,
                     "labels": {"polite": "chosen", "short": short}})
    return rows


def test_label_vector_defaults_and_errors():
    rec = validate_record({"prompt": "p", "chosen": "a", "rejected": "b", "labels": {"TA": "rejected"}}, "f.jsonl", 2)
    assert label_vector(rec, ("VQ", "TA")) == [1, -1]
    tie = validate_record({"prompt": "p", "chosen": "a", "rejected": "b", "tie": True}, "f.jsonl", 3)
    assert label_vector(tie, ("VQ", "TA")) == [0, 0]
    with pytest.raises(DataError, match="f.jsonl:2: field 'labels'"):
        label_vector(rec, ("VQ",))


def test_tiny_reward_model_learns_a_separable_set_via_cli(tmp_path, tiny_lm_dir):
    train = write_jsonl(tmp_path / "train.jsonl", separable_pairs(96, 0))
    held = write_jsonl(tmp_path / "eval.jsonl", separable_pairs(48, 1))
    cfg = {
        "recipe": "reward_model", "seed": 0, "output_dir": str(tmp_path / "rm"),
        "adapter": {"name": "text_reward_model", "pretrained": str(tiny_lm_dir), "dims": ["polite", "short"]},
        "objective": {"name": "bradley_terry", "ties": "rao_kupper", "theta": 5.0},
        "data": {"name": "preference_pairs", "path": str(train), "eval_path": str(held)},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"max_steps": 60, "batch_size": 16, "eval_every": 30, "save_every": 30, "progress": False,
                  "lr_scheduler": "constant"},
        "accelerate": {"log_with": []},
    }
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    final_eval = [r for r in read_metrics(tmp_path / "rm" / "metrics.jsonl") if r["split"] == "eval"][-1]
    assert final_eval["accuracy/polite"] >= 0.95, final_eval
    assert final_eval["accuracy/short"] >= 0.85, final_eval
    assert final_eval["accuracy_with_ties/mean"] > 0.6, final_eval
    znorm = json.loads((tmp_path / "rm" / "final" / "znorm.json").read_text())
    assert set(znorm["mean"]) == {"polite", "short"} and znorm["n"] == 96
    # Loaded back as a reward: z-normalised scores, polite answers above rude ones.
    reward = build("reward", {"name": "reward_model", "path": str(tmp_path / "rm" / "final"), "normalize": True,
                              "device": "cpu"})
    assert reward.dims == ("polite", "short")
    scores = reward(["please apple", "no apple", "please apple river stone"], ["Answer:"] * 3)
    assert scores.shape == (3, 2)
    assert scores[0, 0] > scores[1, 0]  # polite
    assert scores[0, 1] > scores[2, 1]  # shorter

"""Recipe ``online`` (DRAGON): short runs through the CLI on a tiny causal LM and a tiny flow model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmalign.cli import main
from mmalign.utils.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [f"Question: what is {a} plus {b}? Answer:" for a, b in ((1, 2), (3, 4), (5, 1), (2, 2))]


def write(tmp_path: Path, cfg: dict, name: str = "online.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def lm_config(tmp_path, tiny_lm_dir, **train) -> dict:
    return {
        "recipe": "online", "seed": 0, "output_dir": str(tmp_path / "out"),
        "adapter": {"name": "causal_lm", "pretrained": str(tiny_lm_dir), "lora": {"r": 4, "alpha": 8}, "max_length": 48},
        "objective": {"name": "dpo", "beta": 0.1},
        "reward": {"name": "gym_arith"},
        "data": {"name": "prompts", "world": "arith", "num_prompts": 4},
        "optim": {"name": "adamw", "lr": 1e-2},
        "train": {"rounds": 2, "prompts_per_round": 4, "samples_per_prompt": 4, "steps_per_round": 2, "batch_size": 2,
                  "sample_kwargs": {"max_new_tokens": 6, "temperature": 1.0, "top_k": 0},
                  "positive_quantile": 0.5, "negative_quantile": 0.5, "pairing": "all", "progress": False, **train},
        "accelerate": {"log_with": []},
    }


def test_online_dpo_on_a_causal_lm_trains_the_lora_and_logs_rounds(tmp_path, tiny_lm_dir):
    assert main(["train", str(write(tmp_path, lm_config(tmp_path, tiny_lm_dir, plot=True)))]) == 0
    out = tmp_path / "out"
    rows = read_metrics(out / "metrics.jsonl")
    rounds = [r for r in rows if r["split"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["final"] == 1
    for key in ("reward/correct", "reward/concise", "reward/total", "vendi", "couples"):
        assert key in rounds[0]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # round 0, step 1: policy == reference
    lora_b = [v for k, v in load_file(str(out / "final" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: trained
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert (out / "rounds.png").stat().st_size > 1000


def test_online_kto_with_reference_refresh_and_resume(tmp_path, tiny_lm_dir):
    """KTO (mismatched-pair KL), reference refreshed every round; resuming after round 1 of 2 gives the
    uninterrupted run's weights."""
    cfg = lm_config(tmp_path, tiny_lm_dir, ref_refresh_every=1, plot=False)
    cfg["objective"] = {"name": "kto", "beta": 0.1}
    assert main(["train", str(write(tmp_path, cfg))]) == 0
    out = tmp_path / "out"
    full = load_file(str(out / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    ref = load_file(str(out / "checkpoints" / "step-00000002" / "reference.safetensors"))
    after_round_1 = load_file(str(out / "checkpoints" / "step-00000001" / "trainable.safetensors"))
    assert all(torch.equal(ref[k], after_round_1[k]) for k in ref)  # round 1's reference: the policy after round 0
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert "kl" in train[0] and train[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigma(0) at the start

    cfg2 = lm_config(tmp_path, tiny_lm_dir, ref_refresh_every=1, plot=False, rounds=1)
    cfg2["objective"], cfg2["output_dir"] = {"name": "kto", "beta": 0.1}, str(tmp_path / "out2")
    assert main(["train", str(write(tmp_path, cfg2, "first.yaml"))]) == 0
    assert main(["train", str(write(tmp_path, cfg2, "first.yaml")), "train.rounds=2", "--resume"]) == 0
    resumed = load_file(str(tmp_path / "out2" / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    for k in full:
        torch.testing.assert_close(resumed[k], full[k])
    assert [r["round"] for r in read_metrics(tmp_path / "out2" / "metrics.jsonl") if r["split"] == "round"] == [0, 1, 2]


def test_online_flow_model_with_an_exemplar_reward(tmp_path):
    """DRAGON on a tiny flow model (the gym's Stable Audio base) with the exemplar reward: completes
    via the CLI, logs the set FAD to the exemplars, and changes the LoRA weights."""
    cfg = {
        "recipe": "dragon", "seed": 0, "output_dir": str(tmp_path / "out"),
        "adapter": {"name": "diffusion", "pretrained": str(ROOT / "assets/gym/chords/base"), "lora": {"r": 4, "alpha": 8},
                    "seconds": 0.512},
        "objective": {"name": "flow_kto", "beta": 100.0},
        "reward": {"name": "exemplar", "exemplars": str(ROOT / "assets/gym/chords/exemplars"),
                   "embedder": {"type": "callable", "fn": "mmalign.gym.chords:chord_features", "modality": "audio"}},
        "data": {"name": "prompts", "world": "chords", "contains": ["major chord", "soft"], "num_prompts": 3},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"rounds": 1, "prompts_per_round": 3, "samples_per_prompt": 2, "steps_per_round": 2, "batch_size": 2,
                  "sample_kwargs": {"num_inference_steps": 3}, "progress": False, "plot": False},
        "accelerate": {"log_with": []},
    }
    assert main(["train", str(write(tmp_path, cfg))]) == 0
    out = tmp_path / "out"
    rounds = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "round"]
    assert rounds[0]["couples"] == 3 and rounds[0]["fad_exemplars"] > 0 and "vendi" in rounds[0]
    state = load_file(str(out / "checkpoints" / "step-00000001" / "trainable.safetensors"))
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    assert (out / "final").is_dir()


def digits_config(tmp_path, reward: dict) -> dict:
    """A short DRAGON run on the digits world's base: a tiny SD3 (rectified flow), Flow-DPO."""
    return {
        "recipe": "dragon", "seed": 0, "output_dir": str(tmp_path / "out"),
        "adapter": {"name": "diffusion", "pretrained": str(ROOT / "assets/gym/digits/base"), "lora": {"r": 4, "alpha": 8}},
        "objective": {"name": "flow_dpo", "beta": 100.0},
        "reward": reward,
        "data": {"name": "prompts", "world": "digits", "num_prompts": 3},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"rounds": 1, "prompts_per_round": 3, "samples_per_prompt": 3, "steps_per_round": 2, "batch_size": 2,
                  "sample_kwargs": {"num_inference_steps": 3}, "progress": False, "plot": False},
        "accelerate": {"log_with": []},
    }


def assert_lora_trained(out: Path) -> None:
    state = load_file(str(out / "checkpoints" / "step-00000001" / "trainable.safetensors"))
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: the update moved it
    assert any((out / "final").rglob("*.safetensors"))


def test_online_flow_dpo_on_a_rectified_flow_model(tmp_path):
    """DRAGON through the CLI on a true rectified-flow model (the digits world's tiny SD3) with Flow-DPO
    and the world's instance reward: completes and changes the trainable (LoRA) parameters."""
    cfg = digits_config(tmp_path, {"name": "gym_digits"})
    assert main(["train", str(write(tmp_path, cfg))]) == 0
    out = tmp_path / "out"
    rounds = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "round"]
    assert rounds[0]["couples"] == 3 and "reward/TA" in rounds[0] and rounds[-1]["final"] == 1
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 2 and train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert_lora_trained(out)


def test_online_flow_dpo_with_a_distribution_level_reward(tmp_path, monkeypatch):
    """The same run with a distribution-to-distribution reward (each sample's leave-one-out credit to
    the round's Vendi score) instead of an instance reward."""
    (tmp_path / "dragon_feats.py").write_text(
        "import torch\n\ndef pixels(x):\n    return torch.as_tensor(x).float().flatten(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = digits_config(tmp_path, {"name": "vendi_credit",
                                   "embedder": {"type": "callable", "fn": "dragon_feats:pixels", "modality": "image"}})
    assert main(["train", str(write(tmp_path, cfg))]) == 0
    out = tmp_path / "out"
    rounds = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "round"]
    assert "reward/vendi_credit" in rounds[0] and rounds[0]["couples"] >= 1
    assert_lora_trained(out)

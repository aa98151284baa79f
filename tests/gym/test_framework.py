"""The gym's machinery on a toy world: annotator, win rates, data generation, evaluation, end to end."""

import json
import math

import pytest
import torch
import yaml

from mmalign.cli import main
from mmalign.data import load_pairs
from mmalign.gym import Annotator, World, compare, generate_pairs, register_world, win_rate
from mmalign.gym.base import WORLDS
from mmalign.rewards.base import Reward


class Bright(Reward):
    dims, modality = ("bright", "red"), "image"

    def forward(self, samples, prompts=None, *, sample_rate=None):
        x = samples.float()
        return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 0].mean(dim=(1, 2)) - x[:, 1:].mean(dim=(1, 2, 3))], 1)


class ToyWorld(World):
    """Brighter (and redder) images are better; the base is a tiny random SD3 pipeline."""

    name, modality, dims = "toy_bright", "image", ("bright", "red")
    sample_kwargs = {"height": 16, "width": 16, "num_inference_steps": 2, "guidance_scale": 1.0}
    base_dir = None

    @property
    def base_path(self):
        return self.base_dir

    def prompts(self, split, n=None, seed=0):
        words = ["sun", "lamp", "fire", "star", "moon", "snow"] if split == "train" else ["day", "noon"]
        out = [f"a bright {w}" for w in words]
        return (out * 10)[:n] if n else out

    def reward(self):
        return Bright()

    def features(self, samples):
        return samples.float().flatten(1)


register_world(ToyWorld)


def test_annotator_agreement_matches_its_temperature():
    g = torch.Generator().manual_seed(0)
    annotator = Annotator(temperature=0.1, tie_threshold=0.02)
    r_a = torch.rand(4000, 1, generator=g)
    r_b = torch.rand(4000, 1, generator=g)
    overall, per_dim = annotator.label(r_a, r_b, ("x",), g)
    delta = (r_a - r_b)[:, 0]
    tie = delta.abs() < 0.02
    assert torch.equal(overall == 0, tie) and torch.equal(per_dim[:, 0] == 0, tie)
    agree = ((overall.float() == torch.sign(delta)) & ~tie).float().sum() / (~tie).sum()
    expected = annotator.expected_agreement(delta[~tie]).mean()
    assert abs(agree.item() - expected.item()) < 0.02  # ~0.8 at this temperature
    sharp = Annotator(temperature=1e-4, tie_threshold=0.0)
    overall, _ = sharp.label(r_a, r_b, ("x",), g)
    assert torch.equal(overall, torch.sign(delta).long())
    with pytest.raises(ValueError):
        Annotator(temperature=0.0)


def test_win_rate_hand_worked_and_self_comparison():
    res = win_rate(torch.tensor([0.3, -0.01, 0.2, -0.4]), torch.zeros(4), tolerance=0.05)
    assert (res["wins"], res["ties"], res["losses"]) == (2, 1, 1) and res["win_rate"] == pytest.approx(0.625)
    assert res["nontie_win_share"] == pytest.approx(2 / 3)
    same = win_rate(torch.arange(10.0), torch.arange(10.0))
    assert same["win_rate"] == 0.5 and same["ci_low"] == same["ci_high"] == 0.5
    # normal-approximation interval, by hand: per-pair scores (1, 0.5, 1, 0)
    scores = torch.tensor([1.0, 0.5, 1.0, 0.0], dtype=torch.float64)
    assert res["ci_high"] - res["win_rate"] == pytest.approx(1.96 * scores.std().item() / 2)


def test_compare_itself_is_half_and_best_of_n_wins():
    world = ToyWorld()
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(24, 3, 4, 4, generator=g) * 2 - 1
    prompts = ["a bright sun"] * 24
    same = compare(world, samples, samples, prompts, [4] * 6, tolerance=0.01)
    assert same["win_rate"] == 0.5 and same["reward"]["bright"]["change"] == 0.0
    # best of each group of 4 (by ground truth) against the first of the group
    r = world.reward()(samples).sum(1).view(6, 4)
    best = samples.view(6, 4, 3, 4, 4)[torch.arange(6), r.argmax(1)]
    first = samples.view(6, 4, 3, 4, 4)[:, 0]
    res = compare(world, first, best, prompts[:6], [1] * 6, tolerance=0.0)
    assert res["win_rate"] > 0.9 and res["reward"]["bright"]["change"] > 0


def test_generate_pairs_writes_standard_data(tmp_path):
    def sampler(prompts, seeds):  # brightness is a function of the seed
        return torch.stack([torch.full((3, 4, 4), (s % 7) / 3.5 - 1) for s in seeds])

    path = generate_pairs(sampler, Bright(), ["a", "b", "c"], tmp_path, modality="image", candidates=4,
                          annotator=Annotator(temperature=1e-3, tie_threshold=1e-3), seed=0, progress=False)
    pairs = load_pairs(path)
    assert len(pairs) == 3 * 6
    assert all((tmp_path / p.chosen).is_file() for p in pairs)
    for p in pairs:
        assert set(p.labels) == {"bright", "red"} and set(p.reward_chosen) == {"bright", "red"}
        if not p.tie:
            assert p.reward_chosen["bright"] > p.reward_rejected["bright"] - 0.01


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    from mmalign.utils.tiny_diffusers import build_tiny_pipeline

    ToyWorld.base_dir = build_tiny_pipeline("sd3", tmp_path_factory.mktemp("toy"))
    return ToyWorld.base_dir


def test_generate_train_and_eval_end_to_end_via_cli(toy_base, tmp_path, capsys):
    cfg = {
        "recipe": "offline_preference", "output_dir": str(tmp_path / "run"),
        "adapter": {"name": "diffusion", "pretrained": str(toy_base), "lora": {"r": 4, "alpha": 4}, "resolution": 16},
        "objective": {"name": "flow_dpo", "beta": 100.0},
        "data": {"name": "generated_pairs", "world": "toy_bright", "num_prompts": 4, "candidates": 3,
                 "eval_fraction": 0.25},
        "optim": {"name": "adamw", "lr": 1e-2},
        "train": {"max_steps": 2, "batch_size": 2, "progress": False, "plot": False},
        "accelerate": {"log_with": []},
        "eval": {"world": "toy_bright", "num_prompts": 2, "samples_per_prompt": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 0
    assert "generated when the run starts" in capsys.readouterr().out
    assert main(["generate", str(path)]) == 0
    pairs = load_pairs(tmp_path / "run" / "generated" / "pairs.jsonl")
    assert len(pairs) == 4 * 3
    assert main(["train", str(path)]) == 0
    result = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert result["n_samples"] == 4 and 0 <= result["win_rate"] <= 1 and set(result["reward"]) == {"bright", "red"}
    assert (tmp_path / "run" / "eval" / "compare.png").stat().st_size > 1000
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"**{result['win_rate']:.3f}**" in report and "![Samples, base (left) and tuned (right)](eval/compare.png)" in report
    assert "| bright |" in report
    assert main(["eval", str(path), "eval.samples_per_prompt=1"]) == 0
    assert "win rate vs base" in capsys.readouterr().out


def test_generated_data_is_reused_across_lora_settings_and_redone_when_sampling_changes(toy_base, tmp_path):
    cfg = {
        "recipe": "offline_preference", "output_dir": str(tmp_path / "run"),
        "adapter": {"name": "diffusion", "pretrained": str(toy_base), "lora": {"r": 4, "alpha": 4}, "resolution": 16},
        "objective": {"name": "flow_dpo"},
        "data": {"name": "generated_pairs", "world": "toy_bright", "num_prompts": 2, "candidates": 2},
        "optim": {"name": "adamw"}, "accelerate": {"log_with": []},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pairs = tmp_path / "run" / "generated" / "pairs.jsonl"
    assert main(["generate", str(path)]) == 0
    first = pairs.stat().st_mtime_ns
    assert main(["generate", str(path), "adapter.lora.r=8", "objective.beta=10.0"]) == 0  # base samples unchanged
    assert pairs.stat().st_mtime_ns == first
    assert main(["generate", str(path), "data.num_prompts=3"]) == 0
    assert pairs.stat().st_mtime_ns != first and len(load_pairs(pairs)) == 3

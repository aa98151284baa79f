"""The noisy-latent reward model: trains through ``mmalign train`` on an easy synthetic case (brightness),
then steers ``mmalign sample`` through ``guidance.*`` overrides; guided sampling on tiny video
pipelines (Wan, LTX: packed latents) and decoded-space guidance on tiny SD3."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmalign.cli import main
from mmalign.config import validate_guidance
from mmalign.guidance import LatentRewardModel, load_latent_reward_model
from mmalign.recipes.sample import make_sampler
from mmalign.utils.metrics import read_metrics
from mmalign.utils.tiny_diffusers import CALL_KWARGS

torch.set_num_threads(1)



def brightness_pairs(root: Path, n: int = 32) -> Path:
    """Pairs of a bright and a dark noisy image (in random order); dim ``bright`` prefers the bright one,
    dim ``coin`` is a tie."""
    rng = np.random.default_rng(0)
    order = random.Random(0)
    rows = []
    for i in range(n):
        paths = {}
        for kind, level in (("bright", 0.75), ("dark", 0.25)):
            pixels = np.clip(level + 0.15 * rng.standard_normal((16, 16, 3)), 0, 1)
            paths[kind] = f"{i}_{kind}.png"
            Image.fromarray((pixels * 255).astype("uint8")).save(root / paths[kind])
        flip = order.random() < 0.5
        rows.append({"prompt": f"sample number {i % 4}", "chosen": paths["dark" if flip else "bright"],
                     "rejected": paths["bright" if flip else "dark"],
                     "labels": {"bright": "rejected" if flip else "chosen", "coin": "tie"}})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(root: Path, pipeline: Path, data: Path) -> Path:
    cfg = {
        "recipe": "latent_reward_model", "seed": 0, "output_dir": str(root / "rm"),
        "adapter": {"name": "latent_reward_model", "pretrained": str(pipeline), "dims": ["bright", "coin"],
                    "width": 16, "depth": 2, "resolution": 16},
        "objective": {"name": "bradley_terry"},
        "data": {"name": "preference_pairs", "path": str(data), "eval_fraction": 0.25},
        "optim": {"name": "adamw", "lr": 3.0e-3},
        "train": {"max_steps": 40, "batch_size": 8, "eval_every": 20, "progress": False, "plot": False,
                  "t_buckets": [0.0, 0.5, 1.0], "eval_noise_draws": 2},
        "accelerate": {"log_with": []},
        "sample": {"prompts": ["sample number 1"], "num_inference_steps": 3, "guidance_scale": 1.0, "height": 16,
                   "width": 16, "weights": "base", "out_dir": str(root / "samples")},
    }
    path = root / "nrg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("nrg")
    cfg = write_config(root, tiny("sd3"), brightness_pairs(root))
    assert main(["train", str(cfg)]) == 0
    return root, cfg


def test_trains_through_the_cli_and_learns_the_easy_dimension(trained):
    root, _ = trained
    final = root / "rm" / "final"
    assert (final / "model.safetensors").is_file() and (final / "latent_reward_model.json").is_file()
    rows = read_metrics(root / "rm" / "metrics.jsonl")
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert np.mean(train[-5:]) < np.mean(train[:5])
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals[-1]["accuracy/bright"] > 0.75 and evals[-1]["loss"] < evals[0]["loss"]
    by_t = json.loads((final / "accuracy_by_t.json").read_text())
    assert set(by_t) == {"accuracy/bright/t0-0.5", "accuracy/bright/t0.5-1", "accuracy/coin/t0-0.5", "accuracy/coin/t0.5-1"}
    assert by_t["accuracy/bright/t0-0.5"] > 0.75  # low noise: the brightness is plain to see
    rm = load_latent_reward_model(final)
    assert rm.dims == ("bright", "coin")


def test_cli_sample_with_guidance_overrides(trained, capsys):
    root, cfg = trained
    rm = root / "rm" / "final"
    assert main(["sample", str(cfg)]) == 0
    plain = np.asarray(Image.open(root / "samples" / "0000_0.png"), dtype=np.float32)
    assert main(["sample", str(cfg), f"guidance.reward_model={rm}", "guidance.weights.bright=1.0",
                 "guidance.weights.coin=0.0", "guidance.scale=3.0", f"sample.out_dir={root / 'guided'}"]) == 0
    guided = np.asarray(Image.open(root / "guided" / "0000_0.png"), dtype=np.float32)
    assert guided.mean() > plain.mean()  # the reward model prefers bright images
    assert main(["sample", str(cfg), f"guidance.reward_model={rm}", "guidance.weights.brite=1.0"]) == 2
    err = capsys.readouterr().err
    assert "guidance.weights.brite" in err and "did you mean 'bright'" in err and "bright, coin" in err


@pytest.mark.parametrize("name", ["wan", "ltx"])
def test_video_pipelines_guided_and_weight_zero(tiny, tmp_path, name):
    path = tiny(name)
    rm_dir = tmp_path / "rm"
    LatentRewardModel(str(path), dims=["TA", "MQ"], width=8, depth=2, resolution=32, num_frames=9).save_pretrained(str(rm_dir))
    adapter = {"name": "diffusion", "pretrained": str(path)}
    kwargs = {**CALL_KWARGS[name], "num_inference_steps": 2, "guidance_scale": 1.0}
    base = make_sampler(adapter, None, kwargs, device="cpu")(["a red cat"], [0])
    zero = validate_guidance({"reward_model": str(rm_dir), "weights": {"TA": 0.0, "MQ": 0.0}})
    assert torch.equal(make_sampler(adapter, None, kwargs, device="cpu", guidance=zero)(["a red cat"], [0]), base)
    g = validate_guidance({"reward_model": str(rm_dir), "weights": {"MQ": 1.0}, "scale": 100.0})
    guided = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(["a red cat"], [0])
    assert guided.shape == base.shape == (1, 3, 9, 32, 32)
    assert not torch.equal(guided, base)


def test_decoded_space_guidance_raises_the_decoded_reward(tiny):
    """Guidance by the (differentiable) digits ground truth on x̂₀ = x_t − t·v, through the tiny SD3's VAE."""
    from mmalign.gym.digits import DigitsReward

    path = tiny("sd3")
    adapter = {"name": "diffusion", "pretrained": str(path)}
    kwargs = {**CALL_KWARGS["sd3"], "num_inference_steps": 4, "guidance_scale": 1.0}
    prompts, seeds = ["a handwritten 3", "the digit 7", "digit 1", "the number 4"], [1, 2, 3, 4]
    base = make_sampler(adapter, None, kwargs, device="cpu")(prompts, seeds)
    g = validate_guidance({"decoded_reward": {"name": "gym_digits"}, "weights": {"TA": 1.0}, "scale": 2.0})
    guided = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
    ta = lambda s: DigitsReward()(s, prompts)[:, 0]  # noqa: E731
    assert ta(guided).mean() > ta(base).mean()

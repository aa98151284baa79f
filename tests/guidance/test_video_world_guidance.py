"""Reward guidance on the moving_digits video world's own base (assets/gym/moving_digits/base), which the
tiny-LTX tests do not cover: its LTX codec takes whole 2-frame × 8×8 patches (8 frames, not stock LTX's
8k+1), so the latent reward model must probe and read [B, 48, 4, 4, 4] latents unpacked from the
pipeline's [B, 64, 48] tokens. Weight 0 is unguided bit for bit; weight > 0 changes the clips."""

from __future__ import annotations

import torch

from mmalign.config import validate_guidance
from mmalign.guidance import LatentRewardModel, load_latent_reward_model
from mmalign.gym.base import ASSETS
from mmalign.gym.moving_digits import MovingDigits
from mmalign.recipes.sample import make_sampler

torch.set_num_threads(1)


def test_guided_sampling_on_the_moving_digits_base(tmp_path):
    base_path = str(ASSETS / "moving_digits" / "base")
    rm_dir = tmp_path / "rm"
    rm = LatentRewardModel(base_path, dims=["TA", "MQ", "VQ"], width=8, depth=2, resolution=32, num_frames=8,
                           max_sequence_length=16)
    assert rm.net_args == {"in_channels": 48, "prompt_dim": 32, "spatial_dims": 3}
    rm.save_pretrained(str(rm_dir))
    loaded = load_latent_reward_model(rm_dir)
    assert loaded(torch.zeros(2, 48, 4, 4, 4), 0.5, loaded.encode_prompts(["a 7 moving left"] * 2)).shape == (2, 3)

    adapter = {"name": "diffusion", "pretrained": base_path}
    kwargs = {**MovingDigits.sample_kwargs, "num_inference_steps": 3}
    prompts, seeds = ["a 7 moving left", "the digit 3 moving up"], [0, 1]
    base = make_sampler(adapter, None, kwargs, device="cpu")(prompts, seeds)
    assert base.shape == (2, 3, 8, 32, 32)
    zero = validate_guidance({"reward_model": str(rm_dir), "weights": {"TA": 0.0, "MQ": 0.0, "VQ": 0.0}})
    assert torch.equal(make_sampler(adapter, None, kwargs, device="cpu", guidance=zero)(prompts, seeds), base)
    g = validate_guidance({"reward_model": str(rm_dir), "weights": {"TA": 1.0}, "scale": 100.0})
    guided = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
    assert guided.shape == base.shape and not torch.equal(guided, base)

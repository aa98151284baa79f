"""The digits gym world: shipped base pipeline, ground-truth reward, prompts (assets/gym/digits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmalign import registry
from mmalign.gym.base import get_world
from mmalign.gym.digits import EVAL_TEMPLATES, TRAIN_TEMPLATES, Digits, DigitsReward, load_real_digits, parse_digit


@pytest.fixture(scope="module")
def world() -> Digits:
    return get_world("digits")


@pytest.fixture(scope="module")
def reward() -> DigitsReward:
    return DigitsReward()


@pytest.fixture(scope="module")
def real():
    gray, labels = load_real_digits(16)
    return (gray * 2 - 1).repeat(1, 3, 1, 1), labels  # as a pipeline gives them: [N, 3, 16, 16] in [-1, 1]


@pytest.fixture(scope="module")
def base_samples(world):
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(world.base_path)
    pipe.set_progress_bar_config(disable=True)
    prompts = world.prompts("eval", 100, seed=0)
    out = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="pt", **world.sample_kwargs)
    return type(pipe).__name__, out.images * 2 - 1, prompts


def test_base_is_a_stock_sd3_pipeline_and_samples_the_world_shape(base_samples):
    name, samples, prompts = base_samples
    assert name == "StableDiffusion3Pipeline"
    assert samples.shape == (len(prompts), 3, 16, 16)
    assert samples.min() >= -1 and samples.max() <= 1
    assert samples.std() > 0.3  # digits, not a flat image


def test_reward_is_registered_and_shaped(world, reward, real):
    built = registry.build("reward", {"name": "gym_digits"})
    assert isinstance(built, DigitsReward) and isinstance(world.reward(), DigitsReward)
    assert reward.dims == world.dims == ("TA", "VQ")
    pixels, labels = real
    r = reward(pixels[:5], [f"a handwritten {d}" for d in labels[:5].tolist()])
    assert r.shape == (5, 2) and ((r >= 0) & (r <= 1)).all()
    with pytest.raises(ValueError, match="one prompt per sample"):
        reward(pixels[:5], None)


def test_ta_is_high_on_real_digits_and_low_on_noise_and_wrong_prompts(reward, real):
    pixels, labels = real
    right = reward(pixels, [f"a handwritten {d}" for d in labels.tolist()])[:, 0]
    wrong = reward(pixels, [f"a handwritten {(d + 1) % 10}" for d in labels.tolist()])[:, 0]
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)).mul(2).sub(1).repeat(1, 3, 1, 1)
    on_noise = reward(noise, [f"a handwritten {i % 10}" for i in range(200)])[:, 0]
    assert right.mean() >= 0.9
    assert wrong.mean() < 0.1
    assert on_noise.mean() < right.mean() - 0.5


def test_base_is_imperfect_but_looks_like_digits(reward, real, base_samples):
    _, samples, prompts = base_samples
    pixels, labels = real
    real_r = reward(pixels, [f"a handwritten {d}" for d in labels.tolist()]).mean(0)
    base_r = reward(samples, prompts).mean(0)
    assert 0.45 < base_r[0] < real_r[0] - 0.1  # room to align on TA (built at ≈ 0.7)
    assert base_r[1] > 0.6  # yet stroke quality is close to real digits'


def test_vq_ranks_real_digits_above_noisy_and_blurred(reward, real):
    pixels, labels = real
    x, prompts = pixels[:300], [f"a handwritten {d}" for d in labels[:300].tolist()]
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 256
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel.expand(3, 1, 5, 5), groups=3)
    vq = {name: reward(imgs, prompts)[:, 1] for name, imgs in (("real", x), ("noisy", noisy), ("blurred", blurred))}
    for worse in ("noisy", "blurred"):
        assert vq["real"].mean() > vq[worse].mean() + 0.1, (worse, vq["real"].mean(), vq[worse].mean())
        assert (vq["real"] > vq[worse]).float().mean() > 0.9


def test_reward_is_differentiable_in_the_samples(reward, real):
    pixels, labels = real
    x = pixels[:4].clone().requires_grad_(True)
    reward(x, [f"a handwritten {d}" for d in labels[:4].tolist()]).sum().backward()
    assert reward.differentiable and x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("prompt, digit", [
    ("a handwritten 3", 3), ("the number 7, written by hand", 7), ("digit 0", 0), ("a sketch of a 9", 9),
    ("handwriting: the digit 5", 5), ("A handwritten Seven", 7), ("a 4, not a 2", 2),
    ("a handwritten 3.", 3),
])
def test_parse_digit(prompt, digit):
    assert parse_digit(prompt) == digit


@pytest.mark.parametrize("prompt", ["a handwritten letter", "the number 12", "3.5"])
def test_parse_digit_refuses_prompts_without_a_digit(prompt):
    with pytest.raises(ValueError, match="no digit"):
        parse_digit(prompt)


def test_train_and_eval_prompts_are_disjoint(world):
    train, evaluation = world.prompts("train"), world.prompts("eval")
    assert len(train) == 10 * len(TRAIN_TEMPLATES) and len(evaluation) == 10 * len(EVAL_TEMPLATES)
    assert not set(train) & set(evaluation)
    assert not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES)
    assert {parse_digit(p) for p in evaluation} == set(range(10))


def test_sampled_prompts_are_seeded_and_balanced(world):
    a = world.prompts("train", 30, seed=0)
    assert a == world.prompts("train", 30, seed=0) and a != world.prompts("train", 30, seed=1)
    assert set(a) <= set(world.prompts("train"))
    assert sorted(parse_digit(p) for p in a) == sorted(list(range(10)) * 3)
    assert set(world.prompts("eval", 500)) == set(world.prompts("eval"))  # cycles through every prompt
    with pytest.raises(ValueError, match="split"):
        world.prompts("test")


def test_features_for_diversity(world, real):
    pixels, _ = real
    feats = world.features(pixels[:10])
    assert feats.shape == (10, 64) and feats.min() >= 0 and feats.max() <= 1
    assert world.features(pixels[:10].repeat(1, 1, 2, 2)).shape == (10, 64)  # other sizes are resized

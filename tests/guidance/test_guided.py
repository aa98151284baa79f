"""Reward-gradient guidance: the guided velocity and Euler step against hand-computed values on tiny
SD3 and Flux pipelines (packed latents), the t window, and weight/scale 0 = unguided, bit for bit."""

from __future__ import annotations


import pytest
import torch

from mmalign.config import validate_guidance
from mmalign.guidance import best_of_n_indices, compute_matched_n, guidance_coefficient, guided_velocity
from mmalign.guidance.guided import LatentLayout, guided_scheduler
from mmalign.recipes.sample import make_sampler
from mmalign.registry import ConfigError
from mmalign.utils.tiny_diffusers import CALL_KWARGS

from .conftest import untrained_rm

torch.set_num_threads(1)



def test_guided_velocity_hand_values():
    # v = 1, ∇r = 2, t = 0.5 (c = 1), λ = 0.25 -> 1 - 0.25·1·2 = 0.5
    assert guided_velocity(torch.tensor([1.0]), torch.tensor([2.0]), 0.5, 0.25).item() == pytest.approx(0.5)
    # t = 0.8 -> c = 4; λ = 1, ∇r = -0.5 -> v + 2
    assert guided_velocity(torch.tensor([1.0]), torch.tensor([-0.5]), 0.8, 1.0).item() == pytest.approx(3.0)
    assert float(guidance_coefficient(0.8)) == pytest.approx(4.0)
    assert float(guidance_coefficient(1.0, max_coef=10.0)) == 10.0
    assert float(guidance_coefficient(0.95, max_coef=10.0)) == 10.0  # 19 clamped
    assert torch.equal(guided_velocity(torch.ones(3), torch.ones(3), 0.5, 0.0), torch.ones(3))


def _pipe(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_one_guided_euler_step_equals_hand_computed(tiny, name):
    """One Euler step from σ₀ to 0 under a linear reward r(x) = ⟨a, x⟩ (∇r = a, canonical layout):
    x₁ = x₀ + (0 − σ₀)·(v − λ·σ₀/(1−σ₀)·a), so x₁(guided) − x₁(unguided) = +λ·σ₀²/(1−σ₀)·a (up the reward),
    compared in the canonical layout (Flux latents are packed in the pipeline)."""
    from mmalign.adapters.diffusion_families import FAMILIES

    pipe = _pipe(tiny(name))
    family = FAMILIES[name]()
    kwargs = {**CALL_KWARGS[name], "num_inference_steps": 1, "sigmas": [0.6], "guidance_scale": 1.0}
    if name == "flux":
        kwargs.pop("guidance_scale")
    layout = LatentLayout(family, pipe, kwargs)
    torch.manual_seed(0)
    a = None

    def reward(x, t, v):
        nonlocal a
        if a is None:
            a = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(1))
        return (x * a).flatten(1).sum(1)

    def run(guided: bool, trace=None):
        gen = torch.Generator().manual_seed(3)
        if not guided:
            return pipe("a red cat", generator=gen, output_type="latent", **kwargs).images
        with guided_scheduler(pipe, reward, layout, scale=0.5, trace=trace):
            return pipe("a red cat", generator=gen, output_type="latent", **kwargs).images

    trace = []
    base, guided = run(False), run(True, trace)
    sigma = trace[0]["sigma"]
    assert 0 < sigma < 1 and len(trace) == 1
    expected = 0.5 * sigma**2 / (1 - sigma) * a  # canonical layout
    diff = layout.unpack(guided - base)
    torch.testing.assert_close(diff[0], expected, rtol=1e-4, atol=1e-5)
    # and the velocity handed to the scheduler is v − λ·σ/(1−σ)·a
    v, v_guided = layout.unpack(trace[0]["velocity"]), layout.unpack(trace[0]["guided"])
    torch.testing.assert_close(v_guided - v, (-0.5 * sigma / (1 - sigma) * a)[None].expand_as(v), rtol=1e-4, atol=1e-5)
    assert not hasattr(pipe.scheduler.__dict__, "step") and "step" not in pipe.scheduler.__dict__  # hook removed


def test_window_leaves_outside_steps_untouched(tiny):
    from mmalign.adapters.diffusion_families import FAMILIES

    pipe = _pipe(tiny("sd3"))
    kwargs = {**CALL_KWARGS["sd3"], "num_inference_steps": 4, "guidance_scale": 1.0}
    layout = LatentLayout(FAMILIES["sd3"](), pipe, kwargs)
    trace = []
    with guided_scheduler(pipe, lambda x, t, v: x.flatten(1).sum(1), layout, scale=1.0, t_min=0.3, t_max=0.8,
                          trace=trace):
        pipe("a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    assert len(trace) == 4
    for step in trace:
        inside = 0.3 <= step["sigma"] <= 0.8
        assert torch.equal(step["guided"], step["velocity"]) != inside, step["sigma"]


def test_weight_zero_and_scale_zero_equal_unguided_exactly(tiny, tmp_path):
    path = tiny("sd3")
    rm = untrained_rm(tmp_path, path)
    adapter = {"name": "diffusion", "pretrained": str(path)}
    kwargs = {**CALL_KWARGS["sd3"], "num_inference_steps": 3, "guidance_scale": 1.0}
    prompts, seeds = ["a red cat", "a blue dog"], [5, 6]
    base = make_sampler(adapter, None, kwargs, device="cpu")(prompts, seeds)
    for overrides in ({"weights": {"TA": 0.0, "VQ": 0.0}}, {"scale": 0.0}):
        g = validate_guidance({"reward_model": str(rm), **overrides})
        out = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
        assert torch.equal(out, base), overrides
    g = validate_guidance({"reward_model": str(rm), "weights": {"TA": 1.0}, "scale": 50.0})
    guided = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
    assert not torch.equal(guided, base)


def test_unknown_dimension_names_the_valid_ones(tiny, tmp_path):
    path = tiny("sd3")
    rm = untrained_rm(tmp_path, path)
    g = validate_guidance({"reward_model": str(rm), "weights": {"TX": 1.0}})
    with pytest.raises(ConfigError, match=r"guidance\.weights\.TX.*did you mean 'TA'.*TA, VQ"):
        make_sampler({"name": "diffusion", "pretrained": str(path)}, None, CALL_KWARGS["sd3"], device="cpu", guidance=g)
    with pytest.raises(ConfigError, match="not both"):
        validate_guidance({"reward_model": str(rm), "decoded_reward": {"name": "gym_digits"}})
    with pytest.raises(ConfigError, match="guidance.scle.*did you mean 'scale'"):
        validate_guidance({"scle": 1.0})


def test_best_of_n_helpers():
    # candidate-major scores for B = 2 samples, n = 3 candidates
    scores = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.7, 0.9])
    assert best_of_n_indices(scores, 3).tolist() == [4, 1]
    assert compute_matched_n(2.0, 1.0) == 2 and compute_matched_n(2.1, 1.0) == 3 and compute_matched_n(0.5, 1.0) == 1


def test_best_of_n_never_worse_than_its_first_candidate(tiny):
    """Candidate 0 is the unguided sample from the same seed, so best-of-N under the (decoded) reward is ≥ base."""
    from mmalign.gym.digits import DigitsReward

    path = tiny("sd3")
    adapter = {"name": "diffusion", "pretrained": str(path)}
    kwargs = {**CALL_KWARGS["sd3"], "num_inference_steps": 2, "guidance_scale": 1.0}
    prompts, seeds = ["a handwritten 3", "the digit 7", "digit 1"], [1, 2, 3]
    base = make_sampler(adapter, None, kwargs, device="cpu")(prompts, seeds)
    g = validate_guidance({"decoded_reward": {"name": "gym_digits"}, "scale": 0.0, "best_of_n": 4})
    bon = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
    reward = DigitsReward()
    total = lambda s: reward(s, prompts).sum(1)  # noqa: E731
    assert (total(bon) >= total(base) - 1e-6).all()
    assert not torch.equal(bon, base)

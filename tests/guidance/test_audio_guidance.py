"""Reward guidance for Stable Audio (cosine v-prediction sampled by the EDM-preconditioned
CosineDPMSolverMultistepScheduler): the guided v at x_t = latents/√(1+σ²), t = atan(σ)·2/π, c = tan θ = σ,
against hand-computed values on the tiny StableAudioPipeline; weight 0 = unguided bit for bit; the
t window and the clamp in the adapter's t units; decoded-space guidance through the Oobleck VAE;
latent best-of-N; and ``mmalign sample`` with guidance overrides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from mmalign.cli import main
from mmalign.config import validate_guidance
from mmalign.guidance import guidance_coefficient
from mmalign.guidance.guided import LatentLayout, edm_noise_level, guided_scheduler
from mmalign.recipes.sample import make_sampler
from mmalign.registry import ConfigError
from mmalign.utils.tiny_diffusers import CALL_KWARGS

from .conftest import untrained_rm

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
PROMPT = "a C major chord, soft"



def _pipe(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _layout(pipe, kwargs):
    from mmalign.adapters.diffusion_families import FAMILIES

    return LatentLayout(FAMILIES["stable_audio"](), pipe, kwargs)


def test_cosine_coefficient_and_edm_mapping():
    # tan(tπ/2): t = 0.5 -> 1; θ = atan(σ) gives back σ
    assert float(guidance_coefficient(0.5, prediction="cosine_v")) == pytest.approx(1.0)
    assert float(guidance_coefficient(0.8, prediction="cosine_v")) == pytest.approx(math.tan(0.4 * math.pi))
    assert float(guidance_coefficient(0.999, 10.0, prediction="cosine_v")) == 10.0
    t, c_in, coef = edm_noise_level(1.0)
    assert (t, c_in, coef) == pytest.approx((0.5, 1 / math.sqrt(2), 1.0))
    t, _, coef = edm_noise_level(500.0)
    assert float(guidance_coefficient(t, prediction="cosine_v")) == pytest.approx(500.0, rel=1e-9)


def test_one_guided_step_equals_hand_computed(tiny):
    """One step σ₀ = 0.3 → 0 under r(x_t) = ⟨a, x_t⟩ (∇r = a in the VP x_t the reward model reads).
    The scheduler gets ṽ = v − λ·σ₀·a; its final step returns x̂₀ = c_skip·x + c_out·ṽ with
    c_out = −σ₀/√(1+σ₀²), so x(guided) − x(unguided) = +λ·σ₀²/√(1+σ₀²)·a = λ σ² cos θ · a (up the reward)."""
    pipe = _pipe(tiny("stable_audio"))
    kwargs = {**CALL_KWARGS["stable_audio"], "num_inference_steps": 1, "guidance_scale": 1.0}
    layout = _layout(pipe, kwargs)
    a = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    seen = {}

    def reward(x, t, v):
        seen["x"], seen["t"] = x.detach().clone(), t
        return (x * a).flatten(1).sum(1)

    def run(guided: bool, trace=None):
        gen = torch.Generator().manual_seed(3)
        if not guided:
            return pipe(PROMPT, generator=gen, output_type="latent", **kwargs).audios
        with guided_scheduler(pipe, reward, layout, scale=0.5, max_coef=10.0, trace=trace):
            return pipe(PROMPT, generator=gen, output_type="latent", **kwargs).audios

    trace = []
    base, guided = run(False), run(True, trace)
    assert len(trace) == 1
    sigma = trace[0]["sigma"]
    assert sigma == pytest.approx(0.3, rel=1e-6)
    assert trace[0]["t"] == pytest.approx(math.atan(sigma) * 2 / math.pi) == seen["t"]
    assert trace[0]["coef"] == pytest.approx(sigma)
    # the reward model saw the VP x_t = latents / √(1+σ²) (what the transformer saw), not the EDM latents
    torch.testing.assert_close(seen["x"], trace[0]["sample"] / math.sqrt(1 + sigma**2))
    v, v_guided = trace[0]["velocity"], trace[0]["guided"]
    atol = 4 * torch.finfo(torch.float32).eps * float(v.abs().max() + base.abs().max())  # float32 cancellation
    torch.testing.assert_close(v_guided - v, (-0.5 * sigma * a)[None].expand_as(v), rtol=1e-4, atol=atol)
    expected = 0.5 * sigma**2 / math.sqrt(1 + sigma**2) * a
    torch.testing.assert_close((guided - base)[0], expected, rtol=1e-4, atol=atol)
    assert "step" not in pipe.scheduler.__dict__  # hook removed


def test_window_in_t_units_clamp_and_gradient_variable(tiny):
    """Three steps, σ = 500, 12.2, 0.3 (t ≈ 0.9987, 0.948, 0.186): the window [0.5, 0.99] guides only
    the middle step; there c = σ = 12.2 is clamped to max_coef = 10 and, for r = ½‖x_t‖², ∇r = x_t."""
    pipe = _pipe(tiny("stable_audio"))
    kwargs = {**CALL_KWARGS["stable_audio"], "num_inference_steps": 3, "guidance_scale": 1.0}
    layout = _layout(pipe, kwargs)
    trace = []
    with guided_scheduler(pipe, lambda x, t, v: 0.5 * x.pow(2).flatten(1).sum(1), layout, scale=0.2, t_min=0.5,
                          t_max=0.99, max_coef=10.0, trace=trace):
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    assert [round(s["t"], 3) for s in trace] == [0.999, 0.948, 0.186]
    for step in trace:
        inside = 0.5 <= step["t"] <= 0.99
        assert torch.equal(step["guided"], step["velocity"]) != inside, step["t"]
    mid = trace[1]
    assert mid["sigma"] > 10 and mid["coef"] == 10.0
    x_t = mid["sample"] / math.sqrt(1 + mid["sigma"] ** 2)
    atol = 4 * torch.finfo(torch.float32).eps * float(mid["velocity"].abs().max() + mid["guided"].abs().max())
    torch.testing.assert_close(mid["guided"] - mid["velocity"], -0.2 * 10.0 * x_t, rtol=1e-4, atol=atol)


def test_hook_outside_window_is_bit_identical(tiny):
    """The SDE scheduler's Brownian noise is seeded from the ``generator`` the pipeline passes only when
    ``scheduler.step``'s signature has it: the wrapped step keeps it, so an all-outside window changes nothing."""
    pipe = _pipe(tiny("stable_audio"))
    kwargs = {**CALL_KWARGS["stable_audio"], "num_inference_steps": 4, "guidance_scale": 1.0}
    gen = lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]  # noqa: E731
    base = pipe([PROMPT] * 2, generator=gen(), output_type="latent", **kwargs).audios
    with guided_scheduler(pipe, lambda x, t, v: x.sum((1, 2)), _layout(pipe, kwargs), scale=1.0, t_min=2.0):
        hooked = pipe([PROMPT] * 2, generator=gen(), output_type="latent", **kwargs).audios
    assert torch.equal(hooked, base)


def test_weight_zero_equals_unguided_exactly_and_guidance_changes_audio(tiny, tmp_path):
    path = tiny("stable_audio")
    rm = untrained_rm(tmp_path, path, ("pitch", "quality"), seconds=1.0)
    adapter = {"name": "diffusion", "pretrained": str(path)}
    kwargs = {**CALL_KWARGS["stable_audio"], "num_inference_steps": 3, "guidance_scale": 1.0}
    prompts, seeds = [PROMPT, "a D minor chord, bright"], [5, 6]
    base = make_sampler(adapter, None, kwargs, device="cpu")(prompts, seeds)
    for overrides in ({"weights": {"pitch": 0.0, "quality": 0.0}}, {"scale": 0.0}):
        g = validate_guidance({"reward_model": str(rm), **overrides})
        assert torch.equal(make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds), base)
    g = validate_guidance({"reward_model": str(rm), "weights": {"pitch": 1.0}, "scale": 50.0})
    guided = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
    assert guided.shape == base.shape and not torch.equal(guided, base)
    # latent best-of-N: candidate 0 is the unguided sample, ranked by the RM on the final (σ = 0) latents
    g = validate_guidance({"reward_model": str(rm), "scale": 0.0, "best_of_n": 3})
    bon = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)(prompts, seeds)
    assert bon.shape == base.shape


def test_decoded_space_guidance_step_and_effect(tiny):
    """x̂₀ = cos θ·x_t − sin θ·v (v held constant) decoded by the Oobleck VAE and cropped to the output
    window, scored by a differentiable reward R. One step: ṽ − v = −λ·σ·cos θ·∇_{x̂₀}R(D(x̂₀)), with the
    right-hand side computed separately by autograd. Over 10 steps guidance raises R (the mean level)."""
    from mmalign import registry
    from mmalign.adapters.diffusion_families import FAMILIES
    from mmalign.guidance.guided import decode_latents, denoised
    from mmalign.rewards.base import Reward

    if "_test_audio_level" not in registry.names("reward"):
        @registry.register("reward", "_test_audio_level")
        class Level(Reward):
            dims = ("level",)
            modality = "audio"
            differentiable = True

            def forward(self, samples, prompts=None, *, sample_rate=None):
                return samples.float().mean((1, 2))[:, None]

    path = tiny("stable_audio")
    pipe, family = _pipe(path), FAMILIES["stable_audio"]()
    kwargs = {**CALL_KWARGS["stable_audio"], "num_inference_steps": 1, "guidance_scale": 1.0}
    layout = _layout(pipe, kwargs)
    b = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    reward = lambda x, t, v: (decode_latents(family, pipe, denoised("cosine_v", x, t, v),  # noqa: E731
                                             audio_window=layout.window) * b).flatten(1).sum(1)
    trace = []
    with guided_scheduler(pipe, reward, layout, scale=3.0, max_coef=10.0, trace=trace):
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    step = trace[0]
    sigma, theta = step["sigma"], step["t"] * math.pi / 2
    x_t = step["sample"] / math.sqrt(1 + sigma**2)
    x0 = (math.cos(theta) * x_t - math.sin(theta) * step["velocity"]).requires_grad_(True)
    (grad_x0,) = torch.autograd.grad((pipe.vae.decode(x0).sample[:, :, :64] * b).sum(), x0)
    expected = -3.0 * sigma * math.cos(theta) * grad_x0
    atol = 4 * torch.finfo(torch.float32).eps * float(step["velocity"].abs().max() + step["guided"].abs().max())
    torch.testing.assert_close(step["guided"] - step["velocity"], expected, rtol=1e-3, atol=atol)

    adapter = {"name": "diffusion", "pretrained": str(path)}
    kwargs = {**CALL_KWARGS["stable_audio"], "num_inference_steps": 10, "guidance_scale": 1.0}
    base = make_sampler(adapter, None, kwargs, device="cpu")([PROMPT], [1])
    g = validate_guidance({"decoded_reward": {"name": "_test_audio_level"}, "scale": 200.0})
    guided = make_sampler(adapter, None, kwargs, device="cpu", guidance=g)([PROMPT], [1])
    assert guided.shape == base.shape == (1, 2, 64)  # cropped to the 1 s window like the pipeline's output
    assert guided.mean() > base.mean() + 0.01


def test_gym_chords_is_differentiable():
    from mmalign.gym.chords import ChordsReward, synth_clip

    x = synth_clip((48, 52, 55), "soft").reshape(1, 1, -1).float().requires_grad_(True)
    x_noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    scores = ChordsReward()(x_noisy, ["a C major chord, soft"])
    (grad,) = torch.autograd.grad(scores.sum(), x)
    assert grad.abs().sum() > 0 and ChordsReward.differentiable


def test_ddpm_audio_is_still_a_clear_error(tiny, tmp_path):
    path = tiny("audioldm")
    g = validate_guidance({"decoded_reward": {"name": "gym_chords"}, "scale": 1.0})
    with pytest.raises(ConfigError, match="audioldm.*flow families.*stable_audio"):
        make_sampler({"name": "diffusion", "pretrained": str(path)}, None, CALL_KWARGS["audioldm"], device="cpu",
                     guidance=g)


def test_cli_sample_with_guidance_overrides(tiny, tmp_path, capsys):
    path = tiny("stable_audio")
    rm = untrained_rm(tmp_path, path, ("pitch", "quality"), seconds=1.0)
    cfg = {"recipe": "latent_reward_model", "seed": 0, "output_dir": str(tmp_path / "run"),
           "adapter": {"name": "latent_reward_model", "pretrained": str(path), "dims": ["pitch", "quality"],
                       "seconds": 1.0},
           "objective": {"name": "bradley_terry"},
           "data": {"name": "generated_pairs", "world": "chords"},  # only validated: `sample` builds no data
           "optim": {"name": "adamw", "lr": 1.0e-3}, "accelerate": {"log_with": []},
           "sample": {"prompts": [PROMPT], "num_inference_steps": 3, "guidance_scale": 1.0, "seconds": 1.0,
                      "weights": "base", "out_dir": str(tmp_path / "plain")}}
    cfg_path = tmp_path / "audio.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    def wav(folder):
        import soundfile as sf

        return sf.read(str(tmp_path / folder / "0000_0.wav"))[0]

    assert main(["sample", str(cfg_path)]) == 0
    common = [f"guidance.reward_model={rm}", "guidance.t_max=1.0"]
    assert main(["sample", str(cfg_path), *common, "guidance.weights.pitch=0", "guidance.weights.quality=0",
                 f"sample.out_dir={tmp_path / 'zero'}"]) == 0
    assert main(["sample", str(cfg_path), *common, "guidance.weights.pitch=1.0", "guidance.scale=50",
                 f"sample.out_dir={tmp_path / 'guided'}"]) == 0
    assert np.array_equal(wav("zero"), wav("plain"))
    assert wav("guided").shape == wav("plain").shape and not np.array_equal(wav("guided"), wav("plain"))
    assert (tmp_path / "guided" / "0000_0_spec.png").is_file()
    assert main(["sample", str(cfg_path), *common, "guidance.weights.pich=1.0"]) == 2
    err = capsys.readouterr().err
    assert "guidance.weights.pich" in err and "did you mean 'pitch'" in err

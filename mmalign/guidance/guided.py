"""Reward-gradient guidance of flow ODE sampling (and Stable Audio's cosine v-prediction) in stock diffusers pipelines.

Convention (../shared/REFERENCES.md, "Inference-time reward guidance"): with ``x_t = (1−t)x₀ + tε``
and velocity ``v = ε − x₀``, adding ``λ∇r`` to the score gives the guided velocity

    ṽ = v − λ · c(t) · ∇_{x_t} r(x_t, t),   c(t) = t/(1−t)  (optionally clamped at ``max_coef``),

with ``r = Σ_d w_d r_d`` the user-weighted reward. The Euler step from σ_i to σ_{i+1} becomes
``x_{i+1} = x_i + (σ_{i+1} − σ_i)·ṽ(x_i, σ_i)``: since σ decreases, it moves x *up* the reward.

Where it is applied: the scheduler's ``step(model_output, timestep, sample)``, wrapped for the
duration of one pipeline call (:func:`guided_scheduler`). There the velocity (after classifier-free
guidance), the current latents ``x_i`` and σ_i are all at hand, so the guided step is exactly the
Euler step above -- the correction is computed at ``x_{t_i}``, the point where the model was
evaluated. (``callback_on_step_end`` runs *after* the step and never sees the initial latents, so
it could only apply the correction one step late or re-derive ``x_i``.) The wrapper works for every
pipeline that steps a flow-matching scheduler (SD3, Flux, Wan, LTX, HunyuanVideo); packed latents
(Flux, LTX) are unpacked to the canonical layout before the reward sees them and the gradient comes
back packed through autograd.

Outside the window ``[t_min, t_max]``, or with ``λ = 0`` or all weights 0, the velocity is passed
through untouched (no hook at all in the last two cases), so sampling is bit-identical to unguided.

Decoded-space guidance: ``x̂₀ = x_t − t·v`` (v held constant: the gradient does not go through the
denoiser, which would cost a backward pass through it per step), decoded by the VAE, scored by any
differentiable reward; ``∇_{x_t} r(D(x̂₀)) = ∇_{x̂₀} r(D(x̂₀))`` under that approximation.

Stable Audio (family ``stable_audio``, cosine v-prediction): with the adapter's convention
``x_t = cos θ·x₀ + sin θ·ε``, ``v = cos θ·ε − sin θ·x₀``, ``θ = tπ/2``, the score is
``∇log p_t = −ε/sin θ``; adding ``λ∇r`` gives ``ε̃ = ε − λ sin θ ∇r``, and since
``v = ε/cos θ − tan θ·x_t``,

    ṽ = v − λ · tan θ · ∇_{x_t} r(x_t, t)     (c = tan θ, clamped at ``max_coef`` like t/(1−t)).

The stock StableAudioPipeline steps CosineDPMSolverMultistepScheduler in EDM variables: its latents
are ``x = x₀ + σε`` with ``σ = tan θ`` (σ_data = 1, checked), the transformer sees
``scale_model_input(x) = x/√(1+σ²) = x_t`` (the adapter's VP x_t) at timestep ``atan(σ)·2/π = t``, and
returns v of that x_t, which ``precondition_outputs`` turns into ``x̂₀ = x/(1+σ²) − σ/√(1+σ²)·v =
cos θ·x_t − sin θ·v``. So in the wrapped ``scheduler.step(v, timestep, x)``: ``x_t = x/√(1+σ²)``,
``t = atan(σ)·2/π`` (the window ``[t_min, t_max]`` is in these t units), ``c = σ``, the gradient is
taken w.r.t. x_t (the reward model's input), and the scheduler receives ṽ, from which it forms the
guided ``x̂₀ + λ·σ²·cos θ·∇r``. Decoded-space guidance there uses ``x̂₀ = cos θ·x_t − sin θ·v`` (v held
constant, so ``∂x̂₀/∂x_t = cos θ``) decoded by the Oobleck VAE and cropped to the pipeline's output window.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
import math
from typing import Callable

import torch


def guidance_coefficient(t: float | torch.Tensor, max_coef: float | None = None, prediction: str = "flow"):
    """``c(t) = t/(1−t)`` (flow) or ``tan(tπ/2)`` (``prediction="cosine_v"``, Stable Audio; = the EDM σ),
    clamped at ``max_coef`` (both diverge at t = 1, pure noise).

    Example: t = 0.5 → 1.0 (either); t = 0.8 → 4.0 (flow), 3.078 (cosine); t = 1.0 with ``max_coef=10`` → 10.0.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    if prediction == "flow":
        coef = torch.where(t < 1, t / (1 - t).clamp(min=1e-12), torch.full_like(t, float("inf")))
    elif prediction == "cosine_v":
        coef = torch.where(t < 1, torch.tan(t * (math.pi / 2)), torch.full_like(t, float("inf")))
    else:
        raise ValueError(f"guidance: no guidance coefficient for prediction {prediction!r} (flow, cosine_v)")
    if max_coef is not None:
        coef = coef.clamp(max=max_coef)
    return coef


def guided_velocity(v: torch.Tensor, grad: torch.Tensor, t: float, scale: float,
                    max_coef: float | None = None, prediction: str = "flow") -> torch.Tensor:
    """``ṽ = v − λ · c(t) · ∇r``.

    Example: v = 1, ∇r = 2, t = 0.5, λ = 0.25 → 1 − 0.25·1·2 = 0.5.

    Args:
        v: velocity ``[B, ...]`` (any layout; ``grad`` in the same one).
        grad: ``∇_{x_t} Σ_d w_d r_d``, same shape.
        t: the noise level at which both were taken (flow: σ; cosine: the adapter's t).
        scale: λ.
        max_coef: clamp of ``c(t)``.
        prediction: ``flow`` (c = t/(1−t)) or ``cosine_v`` (c = tan(tπ/2)).
    """
    coef = float(guidance_coefficient(t, max_coef, prediction))
    return v - (scale * coef) * grad.to(v.dtype)


def denoised(prediction: str, x: torch.Tensor, t: float, v: torch.Tensor) -> torch.Tensor:
    """x̂₀ from x_t and v: ``x_t − t·v`` (flow) or ``cos θ·x_t − sin θ·v`` (cosine_v, θ = tπ/2)."""
    if prediction == "flow":
        return x - t * v
    theta = t * math.pi / 2
    return math.cos(theta) * x - math.sin(theta) * v


# --------------------------------------------------------------------------- noise levels


def edm_guidance_scheduler(scheduler) -> bool:
    """Whether ``scheduler`` is an EDM-preconditioned v-prediction scheduler in the cosine family's
    convention (Stable Audio's CosineDPMSolverMultistepScheduler); raises when it is EDM but cannot be mapped."""
    if not (hasattr(scheduler, "precondition_outputs") and hasattr(scheduler, "sigmas")):
        return False
    config = scheduler.config
    if config.get("prediction_type") != "v_prediction" or float(config.get("sigma_data", 1.0)) != 1.0:
        raise ValueError(f"reward guidance on {type(scheduler).__name__}: needs prediction_type v_prediction and "
                         f"sigma_data 1 (the stable_audio family's x_t = cos θ·x0 + sin θ·ε), got "
                         f"{config.get('prediction_type')}, sigma_data {config.get('sigma_data')}")
    return True


def edm_noise_level(sigma: float) -> tuple[float, float, float]:
    """EDM σ (σ_data = 1) → ``(t, c_in, coef)``: the adapter's ``t = atan(σ)·2/π``, the input scale
    ``1/√(1+σ²)`` taking the EDM latents to the VP x_t, and ``tan θ = σ``.

    Example: σ = 1 → (0.5, 0.7071, 1.0).
    """
    return math.atan(sigma) * 2 / math.pi, 1.0 / math.sqrt(1.0 + sigma * sigma), sigma


# --------------------------------------------------------------------------- latent layouts


class LatentLayout:
    """Pipeline latents ↔ the family's canonical layout (identity except for Flux and LTX packing)."""

    def __init__(self, family, pipe, call_kwargs: dict):
        import inspect

        self.name = family.name
        params = inspect.signature(pipe.__call__).parameters

        def arg(key):
            value = call_kwargs.get(key)
            return value if value is not None else params[key].default if key in params else None

        if self.name == "flux":
            height = arg("height") or pipe.default_sample_size * pipe.vae_scale_factor
            width = arg("width") or pipe.default_sample_size * pipe.vae_scale_factor
            self.h = 2 * (int(height) // (pipe.vae_scale_factor * 2))
            self.w = 2 * (int(width) // (pipe.vae_scale_factor * 2))
        elif self.name == "ltx":
            self.f = (int(arg("num_frames")) - 1) // pipe.vae_temporal_compression_ratio + 1
            self.h = int(arg("height")) // pipe.vae_spatial_compression_ratio
            self.w = int(arg("width")) // pipe.vae_spatial_compression_ratio
            self.p, self.pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        elif self.name == "stable_audio":  # the waveform window the pipeline crops its decoded audio to
            rate = pipe.vae.config.sampling_rate
            start = float(arg("audio_start_in_s") or 0.0)
            end = arg("audio_end_in_s")
            end = pipe.transformer.config.sample_size * pipe.vae.hop_length / rate if end is None else float(end)
            self.window = (int(start * rate), int(end * rate))

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "flux":  # [B, (h/2)(w/2), 4C] -> [B, C, h, w]
            b, _, c4 = x.shape
            c = c4 // 4
            return x.view(b, self.h // 2, self.w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, self.h, self.w)
        if self.name == "ltx":
            from diffusers import LTXPipeline

            return LTXPipeline._unpack_latents(x, self.f, self.h, self.w, self.p, self.pt)
        return x


# --------------------------------------------------------------------------- decoding (decoded-space rewards)


def decode_latents(family, pipe, z: torch.Tensor, *, decode_timestep: float = 0.0,
                   audio_window: tuple[int, int] | None = None) -> torch.Tensor:
    """Canonical latents -> media in [-1, 1] (images ``[B, 3, H, W]``, videos ``[B, 3, F, H, W]``; audio
    ``[B, C, T]`` as the pipeline outputs it: not clamped, cropped to ``audio_window``), differentiable."""
    vae = pipe.vae
    z = z.to(vae.dtype)
    if family.name == "stable_audio":
        out = vae.decode(z).sample.float()
        return out if audio_window is None else out[:, :, audio_window[0]: audio_window[1]]
    if family.name in ("sd3", "flux"):
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        out = vae.decode(z / vae.config.scaling_factor + shift, return_dict=False)[0]
    elif family.name == "wan":
        mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        out = vae.decode(z * std + mean, return_dict=False)[0]
    elif family.name == "ltx":
        from diffusers import LTXPipeline

        z = LTXPipeline._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        temb = None
        if vae.config.timestep_conditioning:
            temb = torch.full((z.shape[0],), decode_timestep, device=z.device, dtype=z.dtype)
        out = vae.decode(z, temb, return_dict=False)[0]
    elif family.name == "hunyuan_video":
        out = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
    else:
        raise ValueError(f"decoded-space guidance: decoding {family.name} latents is not supported")
    out = out.float()
    return out + (out.clamp(-1, 1) - out).detach()  # what the pipeline outputs, with a straight-through gradient


# --------------------------------------------------------------------------- the hook


RewardFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]  # (x canonical, t, v canonical) -> [B] weighted


@contextmanager
def guided_scheduler(pipe, reward_fn: RewardFn, layout: LatentLayout, *, scale: float, t_min: float = 0.0,
                     t_max: float = 1.0, max_coef: float | None = None, trace: list | None = None):
    """Within the block, each ``pipe.scheduler.step`` uses the guided velocity at ``x_i``.

    ``reward_fn(x, t, v)`` gets canonical latents (requiring grad), the noise level and the (detached)
    canonical velocity and returns the ``[B]`` weighted reward. Flow schedulers: x = the latents,
    t = σ_i, c = t/(1−t). EDM-preconditioned v-prediction (Stable Audio): x = the VP ``x_t =
    latents/√(1+σ²)``, ``t = atan(σ)·2/π``, c = σ (module docstring); ``t_min``/``t_max`` are in t units.
    ``trace``, if given, receives per step ``{"sigma", "t", "coef", "sample", "velocity", "guided"}``
    (``sample``: the scheduler's own latents; for tests and inspection).
    """
    scheduler = pipe.scheduler
    edm = edm_guidance_scheduler(scheduler)
    if not edm and (not hasattr(scheduler, "sigmas") or "FlowMatch" not in type(scheduler).__name__):
        raise ValueError(f"reward guidance needs a flow-matching scheduler (or Stable Audio's EDM cosine one); "
                         f"{type(pipe).__name__} uses {type(scheduler).__name__} (families: sd3, flux, wan, ltx, "
                         "hunyuan_video, stable_audio)")
    original = scheduler.step

    # functools.wraps keeps the original signature visible: pipelines inspect it to decide whether to pass
    # ``generator`` (Stable Audio's SDE scheduler seeds its Brownian noise from it; without it the noise
    # would be unseeded and unpaired with the unguided sample's).
    @functools.wraps(original)
    def step(model_output, timestep, sample, *args, **kwargs):
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)
        sigma = float(scheduler.sigmas[scheduler.step_index])
        if edm:
            t, c_in, coef = edm_noise_level(sigma)
        else:
            t, c_in, coef = sigma, 1.0, float(guidance_coefficient(sigma))
        if max_coef is not None:
            coef = min(coef, max_coef)
        guided = model_output
        if t_min <= t <= t_max:
            with torch.enable_grad():
                x = sample.detach().float()
                x = (x * c_in if edm else x).requires_grad_(True)
                v = layout.unpack(model_output.detach().float())
                total = reward_fn(layout.unpack(x), t, v).sum()
                (grad,) = torch.autograd.grad(total, x)
            guided = model_output - (scale * coef) * grad.to(model_output.dtype)
        if trace is not None:
            trace.append({"sigma": sigma, "t": t, "coef": coef, "sample": sample.detach().clone(),
                          "velocity": model_output.detach().clone(), "guided": guided.detach().clone()})
        return original(guided, timestep, sample, *args, **kwargs)

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step  # the instance attribute; the class method is back

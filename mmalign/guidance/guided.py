"""Reward-gradient guidance of flow ODE sampling in stock diffusers pipelines.

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
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch


def guidance_coefficient(t: float | torch.Tensor, max_coef: float | None = None):
    """``c(t) = t/(1−t)``, clamped at ``max_coef`` (it diverges at t = 1, pure noise).

    Example: t = 0.5 → 1.0; t = 0.8 → 4.0; t = 1.0 with ``max_coef=10`` → 10.0.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    coef = torch.where(t < 1, t / (1 - t).clamp(min=1e-12), torch.full_like(t, float("inf")))
    if max_coef is not None:
        coef = coef.clamp(max=max_coef)
    return coef


def guided_velocity(v: torch.Tensor, grad: torch.Tensor, t: float, scale: float,
                    max_coef: float | None = None) -> torch.Tensor:
    """``ṽ = v − λ · c(t) · ∇r``.

    Example: v = 1, ∇r = 2, t = 0.5, λ = 0.25 → 1 − 0.25·1·2 = 0.5.

    Args:
        v: velocity ``[B, ...]`` (any layout; ``grad`` in the same one).
        grad: ``∇_{x_t} Σ_d w_d r_d``, same shape.
        t: the noise level σ at which both were taken.
        scale: λ.
        max_coef: clamp of ``c(t)``.
    """
    coef = float(guidance_coefficient(t, max_coef))
    return v - (scale * coef) * grad.to(v.dtype)


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


def decode_latents(family, pipe, z: torch.Tensor, *, decode_timestep: float = 0.0) -> torch.Tensor:
    """Canonical latents -> media in [-1, 1] (images ``[B, 3, H, W]``, videos ``[B, 3, F, H, W]``), differentiable."""
    vae = pipe.vae
    z = z.to(vae.dtype)
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

    ``reward_fn(x, t, v)`` gets canonical latents (requiring grad), σ_i and the (detached) canonical
    velocity and returns the ``[B]`` weighted reward. ``trace``, if given, receives per step
    ``{"sigma", "sample", "velocity", "guided"}`` (for tests and inspection).
    """
    scheduler = pipe.scheduler
    if not hasattr(scheduler, "sigmas") or "FlowMatch" not in type(scheduler).__name__:
        raise ValueError(f"reward guidance needs a flow-matching scheduler; {type(pipe).__name__} uses "
                         f"{type(scheduler).__name__} (flow families: sd3, flux, wan, ltx, hunyuan_video)")
    original = scheduler.step

    def step(model_output, timestep, sample, *args, **kwargs):
        if scheduler.step_index is None:
            scheduler._init_step_index(timestep)
        sigma = float(scheduler.sigmas[scheduler.step_index])
        guided = model_output
        if t_min <= sigma <= t_max:
            with torch.enable_grad():
                x = sample.detach().float().requires_grad_(True)
                v = layout.unpack(model_output.detach().float())
                total = reward_fn(layout.unpack(x), sigma, v).sum()
                (grad,) = torch.autograd.grad(total, x)
            guided = guided_velocity(model_output, grad, sigma, scale, max_coef)
        if trace is not None:
            trace.append({"sigma": sigma, "sample": sample.detach().clone(), "velocity": model_output.detach().clone(),
                          "guided": guided.detach().clone()})
        return original(guided, timestep, sample, *args, **kwargs)

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step  # the instance attribute; the class method is back

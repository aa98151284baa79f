"""Reward guidance and best-of-N around a stock diffusers pipeline call (the ``guidance:`` section).

:class:`Guidance` holds the reward (a latent reward model, or a differentiable reward on the decoded
x̂₀), the user's per-dimension weights, λ, the t window and N. :meth:`Guidance.generate` runs one
pipeline call for a batch of prompts with all of that applied; ``mmalign sample`` and
:func:`mmalign.recipes.sample.make_sampler` (gym evaluation, benchmarks) both go through it.
"""

from __future__ import annotations

import torch

from mmalign.guidance.guided import (LatentLayout, decode_latents, denoised, edm_guidance_scheduler, edm_noise_level,
                                     guided_scheduler)
from mmalign.registry import ConfigError, nearest


def check_weights(weights: dict[str, float] | None, dims: tuple[str, ...], where: str) -> torch.Tensor:
    """``[D]`` weight vector; an unknown dimension name is a :class:`ConfigError` naming the valid ones."""
    if weights is None:
        return torch.ones(len(dims))
    for name in weights:
        if name not in dims:
            raise ConfigError(f"guidance.weights.{name}: unknown reward dimension{nearest(name, dims)}; "
                              f"{where} has dims {', '.join(dims)}")
    return torch.tensor([float(weights.get(d, 0.0)) for d in dims])


class Guidance:
    """Reward guidance (and best-of-N) for one pipeline, configured by a ``GuidanceConfig``."""

    def __init__(self, cfg, family, pipe, device):
        from mmalign import registry

        self.cfg, self.family, self.pipe, self.device = cfg, family, pipe, device
        self.latent_rm = self.decoded = None
        if cfg.reward_model is not None:
            from mmalign.guidance.latent_reward import load_latent_reward_model, read_meta

            meta = read_meta(cfg.reward_model)
            if meta["family"] != family.name:
                raise ConfigError(f"guidance.reward_model: {cfg.reward_model} reads {meta['family']} latents; "
                                  f"this pipeline is {family.name}")
            self.dims = tuple(meta["dims"])
            self.weights = check_weights(cfg.weights, self.dims, f"the latent reward model {cfg.reward_model}")
            self.latent_rm = load_latent_reward_model(cfg.reward_model, pipe=pipe)
            self.latent_rm.model.to(device)
        elif cfg.decoded_reward is not None:
            self.decoded = registry.build("reward", cfg.decoded_reward)
            self.dims = tuple(self.decoded.dims)
            self.weights = check_weights(cfg.weights, self.dims, f"reward {cfg.decoded_reward['name']}")
            if cfg.guides and not getattr(self.decoded, "differentiable", False):
                raise ConfigError(f"guidance.decoded_reward: {cfg.decoded_reward['name']} is not differentiable; "
                                  "use it for best-of-N only (guidance.scale=0, guidance.best_of_n=N)")
            self.decoded.to(device)
        else:
            raise ConfigError("guidance: set guidance.reward_model or guidance.decoded_reward")
        if (cfg.guides or self.latent_rm is not None) and family.prediction not in ("flow", "cosine_v"):
            raise ConfigError(f"guidance: the {family.name} family samples with a {family.prediction} scheduler; reward "
                              "guidance and latent-reward best-of-N support the flow families (sd3, flux, wan, ltx, "
                              "hunyuan_video) and stable_audio. For it, use best-of-N with a decoded reward "
                              "(guidance.scale=0).")
        self.edm = family.prediction == "cosine_v"
        if self.edm and (cfg.guides or self.latent_rm is not None):
            try:
                ok = edm_guidance_scheduler(pipe.scheduler)
            except ValueError as err:
                raise ConfigError(f"guidance: {err}") from None
            if not ok:
                raise ConfigError(f"guidance: {family.name} needs its EDM scheduler (CosineDPMSolverMultistepScheduler); "
                                  f"the pipeline has {type(pipe.scheduler).__name__}")
        self.sample_rate = getattr(family, "sample_rate", None) if family.modality == "audio" else None
        self.weights = self.weights.to(device)

    # ------------------------------------------------------------------ rewards
    def _prompt_codes(self, prompts: list[str], per_prompt: int) -> torch.Tensor | None:
        if self.latent_rm is None:
            return None
        return self.latent_rm.encode_prompts(prompts, self.device).repeat_interleave(per_prompt, 0)

    def latent_reward(self, x: torch.Tensor, t: float, codes: torch.Tensor) -> torch.Tensor:
        """``[B]`` weighted latent reward of canonical latents at noise level t."""
        return self.latent_rm(x, t, codes.to(x.device)).float() @ self.weights

    def decoded_reward(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``[B]`` weighted decoded-space reward of media in [-1, 1] (audio at the pipeline's sample rate)."""
        if self.sample_rate is not None:
            return self.decoded(media, prompts, sample_rate=self.sample_rate).float() @ self.weights
        return self.decoded(media, prompts).float() @ self.weights

    # ------------------------------------------------------------------ one call
    def generate(self, prompts: list[str], generators, call_kwargs: dict, *, output_type: str, per_prompt: int = 1,
                 trace: list | None = None):
        """One pipeline call with guidance applied; returns ``(output, final canonical latents or None)``."""
        from contextlib import nullcontext

        layout = LatentLayout(self.family, self.pipe, call_kwargs)
        flat_prompts = [p for p in prompts for _ in range(per_prompt)]
        codes = self._prompt_codes(prompts, per_prompt)

        def reward_fn(x, t, v):
            if self.latent_rm is not None:
                return self.latent_reward(x, t, codes)
            x0 = denoised(self.family.prediction, x, t, v)  # x̂₀ with v held constant
            media = decode_latents(self.family, self.pipe, x0, audio_window=getattr(layout, "window", None))
            return self.decoded_reward(media, flat_prompts)

        cfg = self.cfg
        context = (guided_scheduler(self.pipe, reward_fn, layout, scale=cfg.scale, t_min=cfg.t_min, t_max=cfg.t_max,
                                    max_coef=cfg.max_coef, trace=trace) if cfg.guides else nullcontext())
        final = {}
        kwargs = dict(call_kwargs)
        if self.latent_rm is not None and cfg.best_of_n > 1:
            if self.family.name == "stable_audio":  # no callback_on_step_end; the legacy callback sees the same latents
                def keep_last_audio(i, t, latents):
                    final["latents"] = latents

                kwargs.update(callback=keep_last_audio, callback_steps=1)
            else:
                def keep_last(pipe, i, t, tensors):  # the latents the pipeline decodes (it changes nothing)
                    final["latents"] = tensors["latents"]
                    return {}

                kwargs["callback_on_step_end"] = keep_last
        if per_prompt > 1:
            kwargs["num_waveforms_per_prompt" if self.family.name == "stable_audio" else "num_images_per_prompt"] = \
                per_prompt
        with context:
            out = self.pipe(prompts, generator=generators, output_type=output_type, **kwargs)
        latents = None
        if final:
            latents = final["latents"].float()
            if self.edm:  # EDM latents at the last σ (0 with final_sigmas_type "zero") -> the VP x_t
                latents = latents * edm_noise_level(float(self.pipe.scheduler.sigmas[-1]))[1]
            latents = layout.unpack(latents)
        return out, latents, codes

    @torch.no_grad()
    def selection_scores(self, latents: torch.Tensor | None, codes, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``[B]`` scores that best-of-N ranks by: the latent RM at t = 0, or the decoded reward."""
        if self.latent_rm is not None:
            return self.latent_reward(latents.to(self.device), 0.0, codes).cpu()
        return self.decoded_reward(media.to(self.device), prompts).cpu()


def candidate_seed(seed: int, k: int) -> int:
    """Seed of best-of-N candidate k of a sample drawn from ``seed``; candidate 0 is the sample itself."""
    return seed if k == 0 else (seed * 1_000_003 + 7919 * k) % (2**63 - 1)


def best_of_n_indices(scores: torch.Tensor, n: int) -> torch.Tensor:
    """``scores`` ``[n·B]`` laid out candidate-major (``[cand0 of all B; cand1 of all B; ...]``) →
    ``[B]`` flat indices of each sample's best candidate (first on ties)."""
    per = scores.view(n, -1)
    best = per.argmax(0)
    return best * per.shape[1] + torch.arange(per.shape[1])


def compute_matched_n(guided_seconds: float, base_seconds: float) -> int:
    """Best-of-N at equal compute to guidance: N = the guided/unguided wall-time ratio, rounded up
    (so best-of-N gets at least guidance's budget)."""
    import math

    return max(1, math.ceil(guided_seconds / base_seconds - 1e-9))

"""What differs between diffusers model families: prompt encoding, VAE normalisation, packing,
the denoiser call, the prediction type and the LoRA format.

Each family mirrors what its stock pipeline's ``__call__`` does (read from diffusers 0.42), so
that a model trained here samples correctly with the stock pipeline:

| family        | pipeline                  | denoiser                     | prediction |
|---------------|---------------------------|------------------------------|------------|
| sd3           | StableDiffusion3Pipeline  | SD3Transformer2DModel        | flow       |
| flux          | FluxPipeline              | FluxTransformer2DModel       | flow       |
| wan           | WanPipeline               | WanTransformer3DModel        | flow       |
| ltx           | LTXPipeline               | LTXVideoTransformer3DModel   | flow       |
| hunyuan_video | HunyuanVideoPipeline      | HunyuanVideoTransformer3DModel | flow     |
| sd            | StableDiffusionPipeline   | UNet2DConditionModel         | ε or v     |
| audioldm      | AudioLDMPipeline          | UNet2DConditionModel (mel)   | ε or v     |
| stable_audio  | StableAudioPipeline       | StableAudioDiTModel          | v (cosine) |
"""

from __future__ import annotations

import math

import torch
from torch import nn

# --------------------------------------------------------------------------- base classes


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.float().view(-1, *([1] * (like.dim() - 1)))


class Family:
    name = ""
    pipeline_class = ""
    denoiser = "transformer"
    modality = "image"
    prediction = "flow"  # flow | epsilon | v_prediction | cosine_v
    seconds: float | None = None  # audio clip length (set by the adapter)
    max_sequence_length: int | None = None  # text tokens of the T5-style encoder (set by the adapter)

    def text_kwargs(self) -> dict:
        """``max_sequence_length`` for ``pipe.encode_prompt`` when set (else the pipeline's default)."""
        return {} if self.max_sequence_length is None else {"max_sequence_length": self.max_sequence_length}

    def configure(self, pretrained: str, scheduler_config: dict) -> None:
        """Read what the family needs from configs (never loads weights)."""

    def denoiser_class(self, pretrained: str) -> str:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(pretrained)[self.denoiser][1]

    def load_scheduler(self, pretrained: str):
        import diffusers

        cls_name = diffusers.DiffusionPipeline.load_config(pretrained)["scheduler"][1]
        return getattr(diffusers, cls_name).from_pretrained(pretrained, subfolder="scheduler")

    def load_pipeline(self, pretrained: str, *, revision, torch_dtype, denoiser: nn.Module):
        import diffusers

        return getattr(diffusers, self.pipeline_class).from_pretrained(
            pretrained, revision=revision, dtype=torch_dtype, **{self.denoiser: denoiser}
        )

    def default_shift(self, scheduler_config: dict) -> float:
        if scheduler_config.get("use_dynamic_shifting"):
            return 1.0
        return float(scheduler_config.get("shift", 1.0))

    def load_media(self, path: str, adapter) -> torch.Tensor:
        from mmalign.data import media

        if self.modality == "image":
            return media.load_image(path, adapter.resolution)
        if self.modality == "video":
            return media.load_video(path, adapter.num_frames, adapter.resolution)
        return media.load_audio(path, self.sample_rate, adapter.seconds, channels=self.audio_channels)

    # Flow matching: x_t = (1 - t) x0 + t eps, target velocity eps - x0.
    def noisy_and_target(self, x0, noise, t, scheduler_config):
        tt = _view(t, x0)
        return (1 - tt) * x0 + tt * noise, noise - x0

    def save_lora(self, pretrained: str, path: str, layers: dict, model: nn.Module) -> None:
        import diffusers

        pipe_cls = getattr(diffusers, self.pipeline_class)
        pipe_cls.save_lora_weights(path, **{f"{self.denoiser}_lora_layers": layers}, safe_serialization=True)

    def encode_media(self, pipe, media: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_prompts(self, pipe, prompts: list[str], device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, module: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        raise NotImplementedError


class DDPMFamily(Family):
    """ε- or v-prediction models trained on a discrete DDPM schedule (the Diffusion-DPO setting)."""

    denoiser = "unet"

    def configure(self, pretrained, scheduler_config):
        from diffusers import DDPMScheduler

        self.prediction = scheduler_config.get("prediction_type", "epsilon")
        self.ddpm = DDPMScheduler.from_config(scheduler_config)

    def sample_train_timesteps(self, n, scheduler_config, *, generator, device):
        high = self.ddpm.config.num_train_timesteps
        return torch.randint(0, high, (n,), generator=generator, device=device)

    def noisy_and_target(self, x0, noise, t, scheduler_config):
        x_t = self.ddpm.add_noise(x0, noise, t)
        if self.prediction == "epsilon":
            return x_t, noise
        if self.prediction == "v_prediction":
            return x_t, self.ddpm.get_velocity(x0, noise, t)
        raise ValueError(f"unsupported prediction_type {self.prediction!r} in the scheduler config")


def _vae_normalize(vae, z: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


# --------------------------------------------------------------------------- image


class SD3(Family):
    name, pipeline_class = "sd3", "StableDiffusion3Pipeline"

    def encode_media(self, pipe, media):
        return _vae_normalize(pipe.vae, pipe.vae.encode(media).latent_dist.mode())

    def encode_prompts(self, pipe, prompts, device):
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                 **self.text_kwargs())
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def forward(self, module, x_t, t, cond):
        return module(hidden_states=x_t, timestep=t * 1000, return_dict=False, **cond)[0]


class Flux(Family):
    name, pipeline_class = "flux", "FluxPipeline"
    guidance_scale = 3.5  # distilled-guidance models take it as an input

    def encode_media(self, pipe, media):
        return _vae_normalize(pipe.vae, pipe.vae.encode(media).latent_dist.mode())

    def encode_prompts(self, pipe, prompts, device):
        embeds, pooled, _ = pipe.encode_prompt(prompts, None, device=device, **self.text_kwargs())
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def forward(self, module, x_t, t, cond):
        from diffusers import FluxPipeline

        b, c, h, w = x_t.shape
        # Packing is 2x2 patches into channels; the pipeline's own helper, inverted below.
        packed = FluxPipeline._pack_latents(x_t, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        guidance = None
        if module.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=x_t.device, dtype=torch.float32)
        out = module(hidden_states=packed, timestep=t, guidance=guidance, txt_ids=txt_ids, img_ids=img_ids,
                     return_dict=False, **cond)[0]
        # diffusers' _unpack_latents wants pixel sizes and the VAE factor; this is the plain inverse.
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class SD(DDPMFamily):
    name, pipeline_class = "sd", "StableDiffusionPipeline"

    def encode_media(self, pipe, media):
        return pipe.vae.encode(media).latent_dist.mode() * pipe.vae.config.scaling_factor

    def encode_prompts(self, pipe, prompts, device):
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return {"encoder_hidden_states": embeds}

    def forward(self, module, x_t, t, cond):
        return module(x_t, t, return_dict=False, **cond)[0]


# --------------------------------------------------------------------------- video


class Wan(Family):
    name, pipeline_class, modality = "wan", "WanPipeline", "video"

    def encode_media(self, pipe, media):
        cfg = pipe.vae.config
        z = pipe.vae.encode(media).latent_dist.mode()
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        return (z - mean) / std

    def encode_prompts(self, pipe, prompts, device):
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device, **self.text_kwargs())
        return {"encoder_hidden_states": embeds}

    def forward(self, module, x_t, t, cond):
        return module(hidden_states=x_t, timestep=t * 1000, return_dict=False, **cond)[0]


class LTX(Family):
    name, pipeline_class, modality = "ltx", "LTXPipeline", "video"
    frame_rate = 25

    def configure(self, pretrained, scheduler_config):
        from diffusers import AutoencoderKLLTXVideo

        cfg = AutoencoderKLLTXVideo.load_config(pretrained, subfolder="vae")
        scaling = sum(cfg.get("spatio_temporal_scaling", ()))
        self.spatial = cfg.get("spatial_compression_ratio") or cfg.get("patch_size", 1) * 2**scaling
        self.temporal = cfg.get("temporal_compression_ratio") or cfg.get("patch_size_t", 1) * 2**scaling

    def encode_media(self, pipe, media):
        from diffusers import LTXPipeline

        vae = pipe.vae
        z = vae.encode(media).latent_dist.mode()
        return LTXPipeline._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)

    def encode_prompts(self, pipe, prompts, device):
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                 **self.text_kwargs())
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def forward(self, module, x_t, t, cond):
        from diffusers import LTXPipeline

        _, _, f, h, w = x_t.shape
        p, pt = module.config.patch_size, module.config.patch_size_t
        packed = LTXPipeline._pack_latents(x_t, p, pt)
        out = module(hidden_states=packed, timestep=t * 1000, num_frames=f, height=h, width=w,
                     rope_interpolation_scale=(self.temporal / self.frame_rate, self.spatial, self.spatial),
                     return_dict=False, **cond)[0]
        return LTXPipeline._unpack_latents(out, f, h, w, p, pt)


class HunyuanVideo(Family):
    name, pipeline_class, modality = "hunyuan_video", "HunyuanVideoPipeline", "video"
    guidance_scale = 6.0  # embedded (distilled) guidance, as the pipeline's default

    def encode_media(self, pipe, media):
        return pipe.vae.encode(media).latent_dist.mode() * pipe.vae.config.scaling_factor

    def encode_prompts(self, pipe, prompts, device):
        embeds, pooled, mask = pipe.encode_prompt(prompts, device=device, **self.text_kwargs())
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "encoder_attention_mask": mask}

    def forward(self, module, x_t, t, cond):
        guidance = torch.full((x_t.shape[0],), self.guidance_scale * 1000.0, device=x_t.device, dtype=x_t.dtype)
        return module(hidden_states=x_t, timestep=t * 1000, guidance=guidance, return_dict=False, **cond)[0]


# --------------------------------------------------------------------------- audio


class StableAudio(Family):
    """Stable Audio Open: EDM-preconditioned v-prediction, i.e. the cosine VP form with
    ``x_t = cos θ·x₀ + sin θ·ε``, ``v = cos θ·ε − sin θ·x₀``, ``θ = tπ/2``, timestep input t
    (``scale_model_input`` and ``precondition_noise`` of CosineDPMSolverMultistepScheduler)."""

    name, pipeline_class, modality, prediction = "stable_audio", "StableAudioPipeline", "audio", "cosine_v"
    audio_channels = 2

    def configure(self, pretrained, scheduler_config):
        from diffusers import AutoencoderOobleck

        vae = AutoencoderOobleck.load_config(pretrained, subfolder="vae")
        self.sample_rate = vae["sampling_rate"]
        self.audio_channels = vae.get("audio_channels", 2)
        # t range of the scheduler's sigma range: t = atan(sigma) * 2 / pi
        self.t_range = tuple(math.atan(scheduler_config.get(k, d)) * 2 / math.pi
                             for k, d in (("sigma_min", 0.3), ("sigma_max", 500.0)))

    def sample_train_timesteps(self, n, scheduler_config, *, generator, device):
        lo, hi = self.t_range
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

    def noisy_and_target(self, x0, noise, t, scheduler_config):
        theta = _view(t, x0) * (math.pi / 2)
        return torch.cos(theta) * x0 + torch.sin(theta) * noise, torch.cos(theta) * noise - torch.sin(theta) * x0

    def encode_media(self, pipe, media):
        return pipe.vae.encode(media).latent_dist.mode()

    def encode_prompts(self, pipe, prompts, device):
        if not self.seconds:
            raise ValueError("adapter.seconds is required for stable_audio (the clip length it is conditioned on)")
        embeds = pipe.encode_prompt(prompts, device, do_classifier_free_guidance=False)
        start, end = pipe.encode_duration(0.0, self.seconds, device, False, len(prompts))
        return {"encoder_hidden_states": torch.cat([embeds, start, end], dim=1),
                "global_hidden_states": torch.cat([start, end], dim=2)}

    def forward(self, module, x_t, t, cond):
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        rotary = get_1d_rotary_pos_embed(module.config.attention_head_dim // 2,
                                         x_t.shape[2] + cond["global_hidden_states"].shape[1],
                                         use_real=True, repeat_interleave_real=False)
        rotary = tuple(r.to(x_t.device) for r in rotary)
        return module(x_t, t, rotary_embedding=rotary, return_dict=False, **cond)[0]

    def save_lora(self, pretrained, path, layers, model):
        save_peft_lora(path, layers, model)


class AudioLDM(DDPMFamily):
    """AudioLDM: a latent UNet over log-mel spectrograms, conditioned through ``class_labels``."""

    name, pipeline_class, modality = "audioldm", "AudioLDMPipeline", "audio"
    audio_channels = 1

    def configure(self, pretrained, scheduler_config):
        super().configure(pretrained, scheduler_config)
        from transformers import SpeechT5HifiGanConfig

        voc = SpeechT5HifiGanConfig.from_pretrained(pretrained, subfolder="vocoder")
        self.sample_rate, self.n_mels = voc.sampling_rate, voc.model_in_dim
        self.hop = math.prod(voc.upsample_rates)  # one mel frame per vocoder output hop

    def encode_media(self, pipe, media):
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=4 * self.hop, hop_length=self.hop, n_mels=self.n_mels,
            f_min=0.0, f_max=self.sample_rate / 2, power=1.0,
        ).to(media.device)(media.float().mean(1))  # [N, n_mels, T]
        logmel = torch.log(mel.clamp(min=1e-5)).transpose(1, 2).unsqueeze(1)  # [N, 1, T, n_mels]
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        frames = logmel.shape[2] // factor * factor
        z = pipe.vae.encode(logmel[:, :, :frames].to(media.dtype)).latent_dist.mode()
        return z * pipe.vae.config.scaling_factor

    def encode_prompts(self, pipe, prompts, device):
        return {"class_labels": pipe._encode_prompt(prompts, device, 1, False)}

    def forward(self, module, x_t, t, cond):
        return module(x_t, t, encoder_hidden_states=None, return_dict=False, **cond)[0]

    def save_lora(self, pretrained, path, layers, model):
        save_peft_lora(path, layers, model)


def save_peft_lora(path: str, layers: dict, model: nn.Module) -> None:
    """For pipelines without a diffusers LoRA loader: ``adapter_config.json`` + safetensors,
    loadable with :func:`load_peft_lora` (or peft's ``inject_adapter_in_model``)."""
    from pathlib import Path

    from safetensors.torch import save_file

    Path(path).mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].save_pretrained(path)
    save_file({k: v.contiguous() for k, v in layers.items()}, str(Path(path) / "adapter_model.safetensors"))


def load_peft_lora(denoiser: nn.Module, path: str) -> nn.Module:
    from pathlib import Path

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(path)
    denoiser = inject_adapter_in_model(config, denoiser)
    set_peft_model_state_dict(denoiser, load_file(str(Path(path) / "adapter_model.safetensors")))
    return denoiser


FAMILIES: dict[str, type[Family]] = {
    f.name: f for f in (SD3, Flux, Wan, LTX, HunyuanVideo, SD, StableAudio, AudioLDM)
}
PIPELINE_TO_FAMILY = {f.pipeline_class: name for name, f in FAMILIES.items()}


def detect_family(pretrained: str) -> Family:
    """The family of a pipeline directory or hub id, from its ``model_index.json``."""
    from diffusers import DiffusionPipeline

    cls_name = DiffusionPipeline.load_config(pretrained)["_class_name"]
    if cls_name not in PIPELINE_TO_FAMILY:
        raise ValueError(f"{pretrained}: pipeline {cls_name} is not supported; supported: "
                         f"{', '.join(sorted(PIPELINE_TO_FAMILY))} (or set adapter.family)")
    return FAMILIES[PIPELINE_TO_FAMILY[cls_name]]()

"""Noisy-latent reward model ``r_φ(x_t, t, prompt) -> [B, D]`` (Flow-NRG), trained on preference pairs.

It reads the generator's own latents, in the family's canonical layout (``[B, C, h, w]`` images,
``[B, C, f, h, w]`` video, ``[B, C, T]`` audio; Flux/LTX unpacked), at any noise level, so it can
score -- and give a gradient for -- a sample mid-trajectory without decoding it.

Design (why a small net and not the denoiser's features): guidance evaluates the reward and its
gradient at every guided step; a frozen copy of the denoiser would double or triple the cost of
sampling (forward + backward through it), and best-of-N at equal compute would get that much
more budget. A small conv net with FiLM conditioning on t and on the prompt keeps guidance at
about 1.5x an unguided sample next to the digits world's 0.6 M-parameter denoiser (less next to a
real one; benchmarks/bench_guidance.py) while still seeing the latent directly. The prompt enters as the pipeline's own encoding, pooled (``pooled_projections``
where the family has one, else a masked mean of ``encoder_hidden_states``), and is mixed in twice:
FiLM in the trunk and ``[f, p, f⊙p]`` in the per-dimension heads (prompt-sample agreement, TA).

Training (the ``latent_reward_model`` adapter, through the ``latent_reward_model`` recipe): both
items of a pair are noised with the *same* ε and t (``prepare``), so their reward difference reflects
the items, not the noise draw; BT or BT-with-ties per dimension on each pair's labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmalign.adapters.base import RewardModelState
from mmalign.data.pairs import DataError, PreferencePair
from mmalign.registry import register
from mmalign.rewards.reward_model import label_vector

META_FILE, WEIGHTS_FILE = "latent_reward_model.json", "model.safetensors"


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B] -> [B, dim]`` sinusoidal embedding of t in [0, 1] (scaled to 0-1000 like the denoisers)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000 * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


def pool_prompt(cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, P]``: the family's pooled prompt vector, or the masked mean of its token states."""
    if "pooled_projections" in cond:
        return cond["pooled_projections"].float()
    states = cond["encoder_hidden_states"].float()
    mask = cond.get("encoder_attention_mask")
    if mask is None:
        return states.mean(1)
    mask = mask.float()[..., None]
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


class LatentRewardNet(nn.Module):
    """``(x_t [B, C, *S], t [B], prompt [B, P]) -> [B, D]``: conv trunk with FiLM(t, prompt), per-dim heads.

    ``spatial_dims`` (1, 2 or 3) picks Conv1d/2d/3d for audio, image or video latents.
    """

    def __init__(self, in_channels: int, prompt_dim: int, num_dims: int, spatial_dims: int = 2, width: int = 64,
                 depth: int = 3, t_dim: int = 64):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.t_dim = t_dim
        self.cond = nn.Sequential(nn.Linear(t_dim + prompt_dim, width * 2), nn.SiLU(), nn.Linear(width * 2, width * 2))
        chans = [width * min(2**i, 4) for i in range(depth)]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.films = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(chans):
            self.convs.append(conv(prev, c, 3, stride=1 if i == 0 else 2, padding=1))
            self.norms.append(nn.GroupNorm(min(8, c), c))
            self.films.append(nn.Linear(width * 2, 2 * c))
            prev = c
        self.prompt_proj = nn.Linear(prompt_dim, prev)
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(3 * prev, width), nn.SiLU(), nn.Linear(width, 1))
                                   for _ in range(num_dims))
        for film in self.films:  # FiLM starts as the identity
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        emb = self.cond(torch.cat([timestep_embedding(t, self.t_dim), prompt.float()], dim=1))
        h = x_t.float()
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            scale, shift = film(emb).chunk(2, dim=1)
            shape = (h.shape[0], -1) + (1,) * (h.dim() - 2)
            h = F.silu(norm(conv(h)) * (1 + scale.view(shape)) + shift.view(shape))
        feat = h.flatten(2).mean(2)
        p = self.prompt_proj(prompt.float())
        feats = torch.cat([feat, p, feat * p], dim=1)
        return torch.cat([head(feats) for head in self.heads], dim=1)


@register("adapter", "latent_reward_model", runtime_args=("reference_copy", "pipe", "net"))
class LatentRewardModel(RewardModelState):
    """Noisy-latent reward model r(x_t, t, prompt) -> [B, D] over a diffusers model's latents (Flow-NRG)."""

    def __init__(
        self,
        pretrained: str,
        family: str | None = None,
        dims: list[str] = ("overall",),
        width: int = 64,
        depth: int = 3,
        resolution: int | list[int] | None = None,
        num_frames: int | None = None,
        seconds: float | None = None,
        max_sequence_length: int | None = None,
        t_min: float = 0.0,
        t_max: float = 1.0,
        timestep_sampling: Literal["uniform", "logit_normal"] = "uniform",
        reference_copy: bool = False,
        pipe=None,
        net: dict | None = None,
    ):
        """
        Args:
            pretrained: the generator (diffusers pipeline) whose latents and prompt encoding it reads.
            family: as for the ``diffusion`` adapter (detected when unset).
            dims: reward dimensions (one head each), matching the pairs' per-dimension labels.
            width, depth: conv trunk size.
            resolution, num_frames, seconds: how media are loaded (as the ``diffusion`` adapter).
            max_sequence_length: text tokens of the T5-style encoder (used again at sampling time).
            t_min, t_max: training noise levels, t ~ U[t_min, t_max] (flow: σ; cosine: t of the audio family).
            timestep_sampling: ``uniform`` or ``logit_normal`` (then clipped to [t_min, t_max]).
            reference_copy: unused (reward models have no reference).
            pipe: (at sampling time) the generator's loaded pipeline, whose VAE and text encoders are
                reused instead of loading a second copy.
            net: (when loading) the trunk's input sizes, so no probe encoding is needed.
        """
        from mmalign.adapters.diffusion_families import FAMILIES, detect_family

        if not dims or len(set(dims)) != len(dims):
            raise ValueError(f"adapter.dims must be distinct names, got {list(dims)}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"adapter.t_min/t_max: need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
        self.pretrained = pretrained
        self.family = FAMILIES[family]() if family else detect_family(pretrained)
        self.family.seconds = seconds
        self.family.max_sequence_length = max_sequence_length
        self.scheduler_config = dict(self.family.load_scheduler(pretrained).config)
        self.family.configure(pretrained, self.scheduler_config)
        if self.family.prediction not in ("flow", "cosine_v"):
            raise ValueError(f"latent_reward_model: the {self.family.name} family ({self.family.prediction}) is not "
                             "supported; flow families (sd3, flux, wan, ltx, hunyuan_video) and stable_audio are")
        self.dims = tuple(dims)
        self.resolution = [resolution, resolution] if isinstance(resolution, int) else resolution
        self.num_frames, self.seconds = num_frames, seconds
        self.t_range, self.timestep_sampling = (t_min, t_max), timestep_sampling
        self.pipe = pipe
        if net is not None:
            in_channels, prompt_dim, spatial = net["in_channels"], net["prompt_dim"], net["spatial_dims"]
        else:
            in_channels, prompt_dim, spatial = self._probe_shapes()
        self.model = LatentRewardNet(in_channels, prompt_dim, len(dims), spatial, width, depth)
        self.module: nn.Module = self.model
        self.init_args = {"pretrained": pretrained, "family": self.family.name, "dims": list(dims), "width": width,
                          "depth": depth, "resolution": resolution, "num_frames": num_frames, "seconds": seconds,
                          "max_sequence_length": max_sequence_length, "t_min": t_min, "t_max": t_max,
                          "timestep_sampling": timestep_sampling}
        self.net_args = {"in_channels": in_channels, "prompt_dim": prompt_dim, "spatial_dims": spatial}
        self.ref_model, self.has_reference, self.uses_lora = None, False, False

    # ------------------------------------------------------------------ encoding (frozen VAE, text encoders)
    def pipeline(self):
        if self.pipe is None:
            import diffusers

            # Only the VAE and text encoders are used; StableAudioPipeline cannot be built without its denoiser.
            skip = {} if self.family.name == "stable_audio" else {self.family.denoiser: None}
            self.pipe = getattr(diffusers, self.family.pipeline_class).from_pretrained(
                self.pretrained, dtype=torch.float32, **skip)
            for comp in self.pipe.components.values():
                if isinstance(comp, nn.Module):
                    comp.requires_grad_(False).eval()
        return self.pipe

    def _probe_shapes(self) -> tuple[int, int, int]:
        """Latent channels and rank, and the pooled prompt width, from one encoded dummy item (of the configured
        resolution and frame count where set: a VAE may accept only some, e.g. the moving_digits LTX codec's
        whole 2-frame × 8×8 patches, 8 frames and not the 8k+1 of stock LTX)."""
        h, w = self.resolution or ((16, 16) if self.family.modality == "image" else (32, 32))
        probe = {"image": torch.zeros(1, 3, h, w),
                 "video": torch.zeros(1, 3, self.num_frames or 9, h, w)}.get(self.family.modality)
        if probe is None:
            channels = getattr(self.family, "audio_channels", 2)
            probe = torch.zeros(1, channels, int(self.family.sample_rate * (self.seconds or 1.0)))
        with torch.no_grad():
            z = self.family.encode_media(self.pipeline(), probe)
            p = pool_prompt(self.family.encode_prompts(self.pipeline(), ["probe"], "cpu"))
        return z.shape[1], p.shape[1], z.dim() - 2

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device="cpu") -> torch.Tensor:
        """``[B, P]`` pooled prompt encodings, exactly as in training."""
        pipe = self.pipeline()
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module):
                comp.to(device)
        return pool_prompt(self.family.encode_prompts(pipe, prompts, device))

    def _load(self, record: PreferencePair, name: str) -> torch.Tensor:
        from mmalign.data import media

        path = media.resolve_media_path(getattr(record, name), record.data_file or ".")
        try:
            return self.family.load_media(str(path), self)
        except Exception as err:
            raise DataError(record.source, None, name, str(err) if str(path) in str(err) else f"{path}: {err}") from None

    def encode(self, record: PreferencePair) -> dict:
        """VAE latents of both items and the pooled prompt, computed once (the encoders are frozen)."""
        if not isinstance(record.prompt, str) or not isinstance(record.chosen, str):
            raise DataError(record.source, None, "chosen", "media pairs need a text prompt and file paths")
        media = torch.stack([self._load(record, "chosen"), self._load(record, "rejected")])
        with torch.no_grad():
            latents = self.family.encode_media(self.pipeline(), media).float()
        return {"latents": latents, "prompt": self.encode_prompts([record.prompt])[0],
                "labels": label_vector(record, self.dims)}

    def collate(self, encoded: list[dict]) -> dict:
        latents = torch.cat([torch.stack([e["latents"][0] for e in encoded]),
                             torch.stack([e["latents"][1] for e in encoded])])
        prompt = torch.stack([e["prompt"] for e in encoded])
        return {"latents": latents, "prompt": torch.cat([prompt, prompt]),
                "labels": torch.tensor([e["labels"] for e in encoded], dtype=torch.long), "reward_dims": self.dims}

    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """One noise and one t per pair, shared by its chosen and rejected items."""
        latents = batch["latents"]
        n = latents.shape[0] // 2
        noise = torch.randn(latents[:n].shape, generator=generator, device=latents.device)
        lo, hi = self.t_range
        if self.timestep_sampling == "uniform":
            u = torch.rand(n, generator=generator, device=latents.device)
        else:
            u = torch.sigmoid(torch.randn(n, generator=generator, device=latents.device))
        t = lo + (hi - lo) * u
        return {"noise": torch.cat([noise, noise]), "t": torch.cat([t, t])}

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.family.noisy_and_target(x0, noise, t, self.scheduler_config)[0]

    def score(self, batch: dict, aux: dict) -> torch.Tensor:
        """``[2B, D]`` rewards of ``[chosen; rejected]`` at their shared noise and t."""
        x_t = self.noisy(batch["latents"], aux["noise"], aux["t"])
        return self.module(x_t, aux["t"], batch["prompt"]).float()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` rewards of canonical latents ``x_t`` at noise level ``t`` (``[B]`` or scalar)."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
        return self.model(x_t, t, prompt)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """The VAE and text encoders run once at encoding time, in float32."""

    # ------------------------------------------------------------------ state
    def save_pretrained(self, path: str, state_dict=None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.model.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / WEIGHTS_FILE))
        meta = {"type": "latent_reward_model", **self.init_args, "net": self.net_args}
        (path / META_FILE).write_text(json.dumps(meta, indent=2))


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {META_FILE}; train one with `mmalign train` and recipe latent_reward_model")
    return json.loads((path / META_FILE).read_text())


def load_latent_reward_model(path: str | Path, *, pipe=None) -> LatentRewardModel:
    """Load a trained model; ``pipe``: the generator's pipeline, whose encoders it then shares."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    meta.pop("type")
    model = LatentRewardModel(**meta, pipe=pipe)
    model.model.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    model.model.eval().requires_grad_(False)
    return model

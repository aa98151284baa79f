"""Diffusers flow and diffusion models (image, video, audio): the generator case of the score contract.

``score`` is ``-mean((pred - target)²)`` per item, at a noise and timestep that ``prepare`` draws
once per *pair* and that chosen/rejected and policy/reference share. The target follows the
model's prediction type: the velocity ``ε − x₀`` for flow matching (``x_t = (1−t)x₀ + tε``), ε for
epsilon models, ``v = α_t ε − σ_t x₀`` for v-prediction. What differs between SD3, Flux, Wan, LTX,
Stable Audio and UNets (prompt encoding, VAE normalisation, latent packing, the denoiser call)
lives in :mod:`mmalign.adapters.diffusion_families`; this file holds what they share.

Media and prompts are encoded by the pipeline's own VAE and text encoders, or read from an
encoding cache written by ``mmalign cache`` -- then neither is ever loaded during training.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mmalign.adapters.base import LoraSettings, load_trainable_state_dict, trainable_state_dict
from mmalign.adapters.diffusion_families import FAMILIES, Family, detect_family
from mmalign.data.pairs import DataError, PreferencePair, stack_rewards
from mmalign.registry import register

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def sample_timesteps(
    n: int,
    scheme: str,
    *,
    generator: torch.Generator | None,
    device,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> torch.Tensor:
    """``[n]`` values in [0, 1]: ``uniform``, ``logit_normal`` or ``mode`` (SD3's schemes, via diffusers)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        "none" if scheme == "uniform" else scheme, n, logit_mean=logit_mean, logit_std=logit_std,
        mode_scale=mode_scale, device=device, generator=generator,
    )
    return u.clamp(1e-4, 1 - 1e-4)


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow schedulers' timestep shift ``σ = s·u / (1 + (s − 1)·u)`` (s = 1: identity)."""
    return shift * u / (1 + (shift - 1) * u)


def record_key(record: PreferencePair) -> str:
    """Stable id of a media pair (prompt and paths) for the encoding cache."""
    text = json.dumps([record.prompt, record.chosen, record.rejected], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


@register("adapter", "diffusion", runtime_args=("reference_copy",))
class DiffusionAdapter:
    """Diffusers flow/diffusion models (SD3, Flux, Wan, LTX, Stable Audio, AudioLDM, SD UNets), -||pred - target||^2."""

    def __init__(
        self,
        pretrained: str,
        family: str | None = None,
        lora: LoraSettings | None = None,
        resolution: int | list[int] | None = None,
        num_frames: int | None = None,
        seconds: float | None = None,
        max_sequence_length: int | None = None,
        timestep_sampling: Literal["uniform", "logit_normal", "mode"] = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        timestep_shift: float | None = None,
        loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = "none",
        cache_dir: str | None = None,
        gradient_checkpointing: bool = False,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        reference_copy: bool = True,
    ):
        """
        Args:
            pretrained: hub id or local directory of a diffusers pipeline.
            family: sd3, flux, wan, ltx, hunyuan_video, sd (UNet eps/v), stable_audio, audioldm;
                detected from the pipeline's ``model_index.json`` when unset.
            lora: LoRA on the denoiser; the reference is the denoiser with adapters disabled.
                ``null``: full fine-tuning against a frozen copy.
            resolution: media size (int = square, or [height, width]); default: the data's own.
            num_frames: frames per video clip.
            seconds: audio clip length.
            max_sequence_length: text tokens of the T5-style encoder (SD3, Flux, Wan, LTX, HunyuanVideo);
                default: the pipeline's. Train with the length you sample with.
            timestep_sampling: density of t for flow models: uniform, logit_normal, mode (SD3).
            logit_mean, logit_std, mode_scale: parameters of those densities.
            timestep_shift: flow timestep shift; default: the scheduler's ``shift`` (1 if dynamic).
            loss_weighting: SD3 loss weighting of flow models: none, sigma_sqrt, cosmap.
            cache_dir: encoding cache written by ``mmalign cache``; when set, the VAE and text
                encoders are not loaded.
            gradient_checkpointing: recompute denoiser activations in the backward pass.
            torch_dtype: load dtype of every component (trainable weights are kept in float32).
            revision: hub revision.
            reference_copy: (from the recipe) keep a frozen copy for full fine-tuning.
        """
        import diffusers

        self.pretrained, self.revision = pretrained, revision
        self.family: Family = FAMILIES[family]() if family else detect_family(pretrained)
        self.dtype = DTYPES[torch_dtype]
        self.cache = EncodingCache(cache_dir) if cache_dir else None
        denoiser_cls = getattr(diffusers, self.family.denoiser_class(pretrained))
        denoiser = denoiser_cls.from_pretrained(pretrained, subfolder=self.family.denoiser, revision=revision,
                                                dtype=self.dtype)
        self.scheduler_config = dict(self.family.load_scheduler(pretrained).config)
        self.family.seconds = seconds
        if max_sequence_length is not None:
            if self.family.name not in ("sd3", "flux", "wan", "ltx", "hunyuan_video"):
                raise ValueError(f"adapter.max_sequence_length: the {self.family.name} family's text encoder takes none")
            self.family.max_sequence_length = max_sequence_length
        self.family.configure(pretrained, self.scheduler_config)
        self.pipe = None  # VAE, text encoders: loaded on first use, never with a cache
        if gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self.ref_model: nn.Module | None = None
        if lora is not None:
            from peft import LoraConfig, inject_adapter_in_model

            # "all-linear" is a transformers-model shortcut in peft; for diffusers denoisers we use
            # the attention projections, as diffusers' LoRA training scripts do.
            targets = DEFAULT_LORA_TARGETS if lora.target_modules == "all-linear" else lora.target_modules
            denoiser.requires_grad_(False)
            # peft directly (not ModelMixin.add_adapter): works for denoisers without PeftAdapterMixin too.
            denoiser = inject_adapter_in_model(
                LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                           init_lora_weights=True), denoiser)
            for p in denoiser.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            denoiser.float()
            if reference_copy:
                self.ref_model = copy.deepcopy(denoiser).eval().requires_grad_(False)
        self.model = denoiser
        self.module: nn.Module = denoiser
        self.uses_lora = lora is not None
        self.resolution = [resolution, resolution] if isinstance(resolution, int) else resolution
        self.num_frames, self.seconds = num_frames, seconds
        self.timesteps = dict(scheme=timestep_sampling, logit_mean=logit_mean, logit_std=logit_std, mode_scale=mode_scale)
        self.shift = timestep_shift if timestep_shift is not None else self.family.default_shift(self.scheduler_config)
        self.loss_weighting = loss_weighting
        self._use_ref = False

    # ------------------------------------------------------------------ encoding
    def pipeline(self):
        """The full pipeline (VAE, text encoders), loaded once when media must be encoded."""
        if self.pipe is None:
            if self.cache is not None:
                raise RuntimeError("the encoding cache is in use: the VAE and text encoders are not loaded")
            from mmalign.recipes.sample import quiet_loading

            with quiet_loading():
                self.pipe = self.family.load_pipeline(self.pretrained, revision=self.revision, torch_dtype=self.dtype,
                                                      denoiser=self.model)
            for name, comp in self.pipe.components.items():
                if isinstance(comp, nn.Module) and comp is not self.model:
                    comp.requires_grad_(False).eval()
        return self.pipe

    def load_media(self, record: PreferencePair, name: str) -> torch.Tensor:
        path = self.media_path(record, name)
        try:
            return self.family.load_media(str(path), self)
        except Exception as err:  # unreadable or wrongly shaped file: say which record and field
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            raise DataError(record.source, None, name, message) from None

    def media_path(self, record: PreferencePair, name: str) -> Path:
        from mmalign.data.media import resolve_media_path

        path = resolve_media_path(getattr(record, name), record.data_file or ".")
        if not path.exists():
            raise DataError(record.source, None, name, f"{path}: file not found")
        return path

    def encode(self, record: PreferencePair) -> dict:
        """Validate a pair's media (decoded once here, so a bad file fails before training) and keep
        only their paths: pixels are decoded again per batch, never held for the whole dataset."""
        if not isinstance(record.prompt, str) or not isinstance(record.chosen, str):
            raise DataError(record.source, None, "chosen", "media pairs need a text prompt and file paths")
        rewards = {"reward_chosen": record.reward_chosen, "reward_rejected": record.reward_rejected}
        if self.cache is not None:
            key = record_key(record)
            if key not in self.cache:
                raise DataError(record.source, None, None, f"not in the encoding cache {self.cache.root}; run `mmalign cache`")
            return {"key": key, **rewards}
        for name in ("chosen", "rejected"):
            self.load_media(record, name)
        paths = [self.media_path(record, n) for n in ("chosen", "rejected")]
        # (size, mtime) make fingerprints of encoded data change when a file is replaced in place
        stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        return {"prompt": record.prompt, "record": record, "stat": stats, **rewards}

    def collate(self, encoded: list[dict]) -> dict:
        if self.cache is not None:
            items = [self.cache.get(e["key"]) for e in encoded]
            latents = torch.cat([torch.stack([it["chosen"] for it in items]), torch.stack([it["rejected"] for it in items])])
            cond = {k: torch.stack([it[f"cond.{k}"] for it in items]) for k in _cond_keys(items[0])}
            return {"latents": latents, "cond": cond, **stack_rewards(encoded)}
        media = torch.cat([torch.stack([self.load_media(e["record"], name) for e in encoded])
                           for name in ("chosen", "rejected")])
        return {"media": media, "prompts": [e["prompt"] for e in encoded], **stack_rewards(encoded)}

    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """Latents ``[2B, ...]`` and per-pair conditioning (``[B, ...]`` tensors) of a raw batch."""
        pipe = self.pipeline()
        device = batch["media"].device
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module) and comp is not self.model:
                comp.to(device)
        latents = self.family.encode_media(pipe, batch["media"].to(self.dtype)).float()
        cond = self.family.encode_prompts(pipe, batch["prompts"], device)
        return {"latents": latents, "cond": cond}

    # ------------------------------------------------------------------ scoring
    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Encode if needed, then draw one noise and one timestep per pair, shared by its two items."""
        if "latents" not in batch:
            batch.update(self.encode_batch(batch))
        latents = batch["latents"]
        n_pairs = latents.shape[0] // 2
        device = latents.device
        noise = torch.randn(latents[:n_pairs].shape, generator=generator, device=device, dtype=torch.float32)
        if self.family.prediction == "flow":
            u = sample_timesteps(n_pairs, self.timesteps["scheme"], generator=generator, device=device,
                                 **{k: v for k, v in self.timesteps.items() if k != "scheme"})
            t = shift_sigmas(u, self.shift)
        else:
            t = self.family.sample_train_timesteps(n_pairs, self.scheduler_config, generator=generator, device=device)
        return {"noise": torch.cat([noise, noise]), "t": torch.cat([t, t])}

    def score(self, batch: dict, aux: dict) -> torch.Tensor:
        """``[2B]`` ``-mean((pred − target)²)`` per item (times the SD3 loss weight, if chosen)."""
        module = self.ref_model if (self._use_ref and self.ref_model is not None) else self.module
        x0, noise, t = batch["latents"], aux["noise"], aux["t"]
        x_t, target = self.family.noisy_and_target(x0, noise, t, self.scheduler_config)
        cond = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in batch["cond"].items()}
        dtype = next(module.parameters()).dtype  # the (possibly half-precision) frozen weights' dtype
        cond = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in cond.items()}
        pred = self.family.forward(module, x_t.to(dtype), t, cond)
        err = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        if self.family.prediction == "flow" and self.loss_weighting != "none":
            from diffusers.training_utils import compute_loss_weighting_for_sd3

            err = err * compute_loss_weighting_for_sd3(self.loss_weighting, t.float())
        return -err

    @contextmanager
    def reference(self):
        """Score with the reference: LoRA disabled, or the frozen copy."""
        if self.uses_lora:
            set_lora_enabled(self.model, False)
            try:
                yield
            finally:
                set_lora_enabled(self.model, True)
            return
        if self.ref_model is None:
            raise RuntimeError("no reference model is kept (reference scores were precomputed)")
        self._use_ref = True
        try:
            yield
        finally:
            self._use_ref = False

    @property
    def has_reference(self) -> bool:
        return self.uses_lora or self.ref_model is not None

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Frozen weights (LoRA base, reference copy, VAE, text encoders) in the mixed-precision dtype."""
        for p in self.model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
        if self.ref_model is not None:
            self.ref_model.to(dtype)
        self.dtype = dtype
        if self.pipe is not None:
            for comp in self.pipe.components.values():
                if isinstance(comp, nn.Module) and comp is not self.model:
                    comp.to(dtype)

    # ------------------------------------------------------------------ state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self.model)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state_dict(self.model, state)

    def save_pretrained(self, path: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """LoRA: diffusers LoRA weights that ``pipe.load_lora_weights(path)`` (or the denoiser's
        ``load_lora_adapter``) reads. Full fine-tuning: the denoiser in ``path/<subfolder>``."""
        if self.uses_lora:
            from peft.utils import get_peft_model_state_dict

            layers = get_peft_model_state_dict(self.model, state_dict=state_dict)
            self.family.save_lora(self.pretrained, path, layers, self.model)
        else:
            self.model.save_pretrained(Path(path) / self.family.denoiser, safe_serialization=True, state_dict=state_dict)


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every peft LoRA layer of ``model`` on or off (off = the base model, our reference)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def _cond_keys(item: dict) -> list[str]:
    return sorted(k.split(".", 1)[1] for k in item if k.startswith("cond."))


class EncodingCache:
    """Latents and prompt encodings in safetensors shards, with ``index.json`` mapping keys to shards.

    Each record key holds ``chosen``, ``rejected`` (latents) and ``cond.<name>`` (prompt encoding)
    tensors, stored as ``<key>/<name>``; shards are opened lazily and read per record.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"no encoding cache at {self.root} (index.json missing); run `mmalign cache CONFIG`")
        meta = json.loads(index.read_text())
        self.index: dict[str, str] = meta["records"]  # record key -> shard file
        self.names: list[str] = meta["tensors"]  # per-record tensor names: chosen, rejected, cond.*
        self.meta = meta
        self._handles: dict[str, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        shard = self.index[key]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / shard), "pt")
        handle = self._handles[shard]
        return {name: handle.get_tensor(f"{key}/{name}") for name in self.names}


def write_encoding_cache(adapter: DiffusionAdapter, records: list[PreferencePair], root: str | Path, *,
                         batch_size: int = 8, shard_size: int = 512, device="cpu", progress: bool = True) -> Path:
    """Encode every pair once (VAE latents of both items, text-encoder outputs of the prompt) into
    safetensors shards under ``root``; written under a temporary name, then renamed into place."""
    import shutil

    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unique = list({record_key(r): r for r in records}.items())
    index, names, shard, shard_id = {}, None, {}, 0

    def flush():
        nonlocal shard, shard_id
        if shard:
            save_file(shard, str(tmp / f"shard-{shard_id:05d}.safetensors"))
            shard, shard_id = {}, shard_id + 1

    for start in tqdm(range(0, len(unique), batch_size), desc="encode", disable=not progress):
        chunk = unique[start: start + batch_size]
        batch = adapter.collate([adapter.encode(r) for _, r in chunk])
        batch["media"] = batch["media"].to(device)
        enc = adapter.encode_batch(batch)
        n = len(chunk)
        for i, (key, _) in enumerate(chunk):
            item = {"chosen": enc["latents"][i], "rejected": enc["latents"][n + i],
                    **{f"cond.{k}": v[i] for k, v in enc["cond"].items()}}
            names = names or sorted(item)
            shard.update({f"{key}/{name}": t.detach().to("cpu", torch.float32).contiguous() for name, t in item.items()})
            index[key] = f"shard-{shard_id:05d}.safetensors"
        if len(shard) >= shard_size * len(names):
            flush()
    flush()
    meta = {"records": index, "tensors": names, "family": adapter.family.name, "pretrained": adapter.pretrained,
            "resolution": adapter.resolution, "num_frames": adapter.num_frames, "seconds": adapter.seconds}
    (tmp / "index.json").write_text(json.dumps(meta))
    shutil.rmtree(root, ignore_errors=True)
    tmp.replace(root)
    return root

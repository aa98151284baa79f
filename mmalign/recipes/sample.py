"""``mmalign sample CONFIG``: generate from prompts with a base or fine-tuned model.

Flow and diffusion models sample through their stock diffusers pipeline (Euler ODE for the flow
families, the model's own scheduler otherwise, classifier-free guidance), with the trained LoRA
loaded the way a user would load it (``pipe.load_lora_weights``). Outputs: a PNG grid and one PNG
per image; a GIF and an MP4 per video; a WAV and a spectrogram PNG per audio clip; JSONL for text.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmalign.config import RunConfig


def resolve_prompts(cfg: RunConfig) -> list[str]:
    prompts = list(cfg.sample.prompts)
    if cfg.sample.prompts_file:
        prompts += [line.strip() for line in Path(cfg.sample.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("sample: give sample.prompts=[...] or sample.prompts_file=FILE")
    return prompts


def resolve_weights(cfg: RunConfig) -> Path | None:
    """The trained weights to apply: ``sample.weights``, else ``OUTPUT_DIR/final`` if present."""
    if cfg.sample.weights == "base":
        return None
    if cfg.sample.weights is not None:
        path = Path(cfg.sample.weights)
        if not path.exists():
            raise FileNotFoundError(f"sample.weights: {path} does not exist")
        return path
    final = Path(cfg.output_dir) / "final"
    return final if final.exists() else None


def load_diffusion_pipeline(pretrained: str, family, weights: Path | None, *, torch_dtype=torch.float32):
    """The stock pipeline with trained weights applied: a diffusers LoRA via ``load_lora_weights``,
    a peft LoRA for pipelines without a LoRA loader, or a fully fine-tuned denoiser."""
    import diffusers

    from mmalign.adapters.diffusion_families import load_peft_lora

    pipe_cls = getattr(diffusers, family.pipeline_class)
    kwargs = {}
    if weights is not None and (weights / family.denoiser).is_dir():  # full fine-tuning
        denoiser_cls = getattr(diffusers, family.denoiser_class(pretrained))
        kwargs[family.denoiser] = denoiser_cls.from_pretrained(weights / family.denoiser, dtype=torch_dtype)
    with quiet_loading():
        pipe = pipe_cls.from_pretrained(pretrained, dtype=torch_dtype, **kwargs)
        if weights is not None and (weights / "pytorch_lora_weights.safetensors").is_file():
            pipe.load_lora_weights(str(weights))
        elif weights is not None and (weights / "adapter_model.safetensors").is_file():
            setattr(pipe, family.denoiser, load_peft_lora(getattr(pipe, family.denoiser), str(weights)))
    return pipe


@contextmanager
def quiet_loading():
    """Silence diffusers/transformers loading bars and messages below error level while a pipeline loads
    (e.g. diffusers warns "no LoRA keys for the text encoder" for every denoiser-only LoRA, which is how
    ours are by design); errors still show, and the levels are restored afterwards."""
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    d_level, t_level = d_logging.get_verbosity(), t_logging.get_verbosity()
    d_logging.set_verbosity_error()
    t_logging.set_verbosity_error()
    d_logging.disable_progress_bar()
    t_logging.disable_progress_bar()
    try:
        yield
    finally:
        d_logging.set_verbosity(d_level)
        t_logging.set_verbosity(t_level)
        d_logging.enable_progress_bar()
        t_logging.enable_progress_bar()


def _pipeline_kwargs(family, sample) -> dict:
    kwargs = {"num_inference_steps": sample.num_inference_steps, "guidance_scale": sample.guidance_scale}
    if family.modality in ("image", "video"):
        kwargs.update({k: getattr(sample, k) for k in ("height", "width") if getattr(sample, k)})
    if family.modality == "video" and sample.num_frames:
        kwargs["num_frames"] = sample.num_frames
    if family.modality == "audio" and sample.seconds:
        kwargs["audio_end_in_s" if family.name == "stable_audio" else "audio_length_in_s"] = sample.seconds
    return kwargs


@torch.no_grad()
def sample_diffusion(cfg: RunConfig, out_dir: Path, prompts: list[str]) -> list[Path]:
    from mmalign.adapters.diffusion_families import FAMILIES, detect_family
    from mmalign.data import media

    adapter_cfg = cfg.adapter
    family = FAMILIES[adapter_cfg["family"]]() if adapter_cfg.get("family") else detect_family(adapter_cfg["pretrained"])
    family.configure(adapter_cfg["pretrained"], dict(family.load_scheduler(adapter_cfg["pretrained"]).config))
    pipe = load_diffusion_pipeline(adapter_cfg["pretrained"], family, resolve_weights(cfg))
    pipe.set_progress_bar_config(disable=True)
    device = "cuda" if torch.cuda.is_available() and not cfg.accelerate.cpu else "cpu"
    pipe.to(device)
    written, images = [], []
    kwargs = _pipeline_kwargs(family, cfg.sample)
    guide = _build_guidance(cfg.guidance, family, pipe, device)
    for i, prompt in enumerate(tqdm(prompts, desc="sample")):
        generator = torch.Generator(device).manual_seed(cfg.seed + i)
        for j in range(cfg.sample.num_per_prompt):
            if guide is None:
                out = pipe(prompt, generator=generator, output_type="pt" if family.modality != "audio" else "np",
                           **kwargs)
                sample = media_from_output(family, out)[0]
            else:
                sample = _guided_samples(guide, family, [prompt], generator, kwargs)[0]
            stem = out_dir / f"{i:04d}_{j}"
            if family.modality == "image":
                images.append(sample.cpu())
                written.append(media.save_image_grid(sample[None], stem.with_suffix(".png"), nrow=1))
            elif family.modality == "video":
                written.append(media.save_video(sample, stem.with_suffix(".gif"), fps=8))
                written.append(media.save_video(sample, stem.with_suffix(".mp4"), fps=8))
            else:
                rate = family.sample_rate
                written.append(media.save_audio(sample, stem.with_suffix(".wav"), rate))
                written.append(media.save_spectrogram_png(sample, rate, stem.with_name(stem.name + "_spec.png")))
    if images:
        written.append(media.save_image_grid(torch.stack(images), out_dir / "grid.png", nrow=cfg.sample.num_per_prompt))
    return written


@torch.no_grad()
def sample_text(cfg: RunConfig, out_dir: Path, prompts: list[str]) -> list[Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pretrained = cfg.adapter.get("pretrained")
    weights = resolve_weights(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.adapter.get("tokenizer") or pretrained)
    model = AutoModelForCausalLM.from_pretrained(weights if weights and (weights / "config.json").is_file() else pretrained)
    if weights is not None and (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights)
    model.eval()
    rows = []
    for i, prompt in enumerate(tqdm(prompts, desc="sample")):
        torch.manual_seed(cfg.seed + i)
        ids = tokenizer(prompt, return_tensors="pt")
        for _ in range(cfg.sample.num_per_prompt):
            out = model.generate(**ids, max_new_tokens=cfg.sample.max_new_tokens, do_sample=cfg.sample.temperature > 0,
                                 temperature=cfg.sample.temperature or None, pad_token_id=tokenizer.pad_token_id)
            rows.append({"prompt": prompt, "completion": tokenizer.decode(out[0, ids["input_ids"].shape[1]:],
                                                                           skip_special_tokens=True)})
    path = out_dir / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [path]


def media_from_output(family, out) -> torch.Tensor:
    """A pipeline output (``output_type="pt"``, audio ``"np"``) as samples in [-1, 1]: images
    ``[B, 3, H, W]``, videos ``[B, 3, F, H, W]``, audio ``[B, C, T]``."""
    if family.modality == "image":
        return out.images.float().cpu() * 2 - 1
    if family.modality == "video":
        return out.frames.float().cpu().permute(0, 2, 1, 3, 4) * 2 - 1  # [B, F, 3, H, W] -> [B, 3, F, H, W]
    audio = torch.as_tensor(out.audios).float().cpu()
    return audio if audio.dim() == 3 else audio[:, None]


# --------------------------------------------------------------------------- reward guidance (guidance: section)


def _build_guidance(gcfg, family, pipe, device):
    """A :class:`~mmalign.guidance.sampler.Guidance` when the ``guidance:`` section sets a reward, else None."""
    if gcfg is None or not gcfg.enabled:
        return None
    from mmalign.guidance.sampler import Guidance

    return Guidance(gcfg, family, pipe, device)


def _guided_samples(guide, family, prompts: list[str], generators, kwargs: dict) -> torch.Tensor:
    """Samples of ``prompts`` with guidance and best-of-N applied. ``generators``: one generator
    (drawn from in order, as the stock call does) or one per prompt; with best-of-N, candidate k of a
    per-prompt generator seeded s is seeded ``candidate_seed(s, k)`` (candidate 0 = the unguided seed)."""
    from mmalign.guidance.sampler import best_of_n_indices

    n = guide.cfg.best_of_n
    output_type = "pt" if family.modality != "audio" else "np"
    if n == 1:
        out, _, _ = guide.generate(prompts, generators, kwargs, output_type=output_type)
        return media_from_output(family, out)
    flat = list(prompts) * n
    if isinstance(generators, list):
        generators = [g for k in range(n) for g in _candidate_generators(generators, k)]
    out, latents, codes = guide.generate(flat, generators, kwargs, output_type=output_type)
    samples = media_from_output(family, out)
    scores = guide.selection_scores(latents, codes, samples, flat)
    return samples[best_of_n_indices(scores, n)]


def _candidate_generators(generators: list, k: int) -> list:
    from mmalign.guidance.sampler import candidate_seed

    return [torch.Generator(g.device).manual_seed(candidate_seed(g.initial_seed(), k)) for g in generators]


def run_sample(cfg: RunConfig) -> list[Path]:
    if cfg.adapter is None:
        raise ValueError("sample: the config needs an adapter section")
    out_dir = Path(cfg.sample.out_dir or Path(cfg.output_dir) / "samples")
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = resolve_prompts(cfg)
    if cfg.adapter["name"] == "causal_lm":
        return sample_text(cfg, out_dir, prompts)
    return sample_diffusion(cfg, out_dir, prompts)


# The adapter keys make_sampler reads: what a base model's samples depend on (LoRA and training
# settings do not), e.g. for fingerprinting generated data.
SAMPLER_KEYS = ("name", "pretrained", "family", "tokenizer")


def make_sampler(adapter_cfg: dict, weights: Path | None, sample_kwargs: dict, *, device: str | None = None,
                 guidance=None):
    """``sampler(prompts, seeds) -> samples`` for a base (``weights=None``) or fine-tuned model:
    images ``[B, 3, H, W]``, videos ``[B, 3, F, H, W]``, audio ``[B, C, T]`` in [-1, 1]; text ``list[str]``.
    Each sample is drawn from its own seed, so two models sampled with the same seeds share noise.
    ``guidance``: a ``GuidanceConfig`` (reward guidance and/or best-of-N; diffusion models only)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if adapter_cfg["name"] == "causal_lm":
        return _text_sampler(adapter_cfg, weights, sample_kwargs, device)
    from mmalign.adapters.diffusion_families import FAMILIES, detect_family

    pretrained = adapter_cfg["pretrained"]
    family = FAMILIES[adapter_cfg["family"]]() if adapter_cfg.get("family") else detect_family(pretrained)
    family.configure(pretrained, dict(family.load_scheduler(pretrained).config))
    pipe = load_diffusion_pipeline(pretrained, family, weights).to(device)
    pipe.set_progress_bar_config(disable=True)

    guide = _build_guidance(guidance, family, pipe, device)

    @torch.no_grad()
    def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        if guide is not None:
            return _guided_samples(guide, family, prompts, generators, sample_kwargs)
        out = pipe(prompts, generator=generators, output_type="pt" if family.modality != "audio" else "np",
                   **sample_kwargs)
        return media_from_output(family, out)

    sample.sample_rate = getattr(family, "sample_rate", None)  # audio: the rate of what it returns
    return sample


def _text_sampler(adapter_cfg: dict, weights: Path | None, sample_kwargs: dict, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pretrained = adapter_cfg.get("pretrained")
    tokenizer = AutoTokenizer.from_pretrained(adapter_cfg.get("tokenizer") or pretrained)
    source = weights if weights is not None and (weights / "config.json").is_file() else pretrained
    model = AutoModelForCausalLM.from_pretrained(source)
    if weights is not None and (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights)
    model.to(device).eval()
    kwargs = {"max_new_tokens": 16, "do_sample": True, "temperature": 1.0, **sample_kwargs}

    @torch.no_grad()
    def sample(prompts: list[str], seeds: list[int]) -> list[str]:
        out = []
        for prompt, seed in zip(prompts, seeds):
            torch.manual_seed(seed)
            ids = tokenizer(prompt, return_tensors="pt").to(device)
            gen = model.generate(**ids, pad_token_id=tokenizer.pad_token_id, **kwargs)
            out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return out

    return sample

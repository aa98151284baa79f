"""CLIP and CLAP scores on tiny random models built offline: math, gradients, shapes, resampling."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from mmalign import registry
from mmalign.config import validate_component
from mmalign.registry import ConfigError
from mmalign.rewards.clap import CLAPScore
from mmalign.rewards.clip import CLIPScore
from mmalign.rewards.embedders import CLAPAudioEmbedder, clap_logmel, l2n, repeat_pad

TINY_CLIP = "mmalign-test-tiny-clip"
PROMPTS = ["a red cat running near the blue river", "a loud drum playing in the city"]


def register_tiny_clip() -> str:
    """A 1-layer open_clip ViT (32 px input) under TINY_CLIP; CLIP's BPE tokenizer ships with open_clip."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        cfg = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
        path = Path(tempfile.mkdtemp()) / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    return TINY_CLIP


def build_tiny_clap(out: Path, fused: bool = False) -> Path:
    """A random transformers ClapModel (HTSAT with 8-wide patches, 1-layer RoBERTa) saved with its
    locally trained RobertaTokenizer and feature extractor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

    from mmalign.utils.tiny_diffusers import train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(RobertaTokenizer, model_max_length=77)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        audio_config=dict(patch_embeds_hidden_size=8, hidden_size=64, depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1], enable_fusion=fused),
        projection_dim=16,
    )
    ClapModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_score():
    return CLIPScore(model=register_tiny_clip(), pretrained=None, device="cpu")


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory):
    return build_tiny_clap(tmp_path_factory.mktemp("tiny-clap"))


@pytest.fixture(scope="module")
def clap_score(tiny_clap_dir):
    return CLAPScore(model=str(tiny_clap_dir), device="cpu")


def images(b=2, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.5 * torch.sin(2 * math.pi * freq * t) + 0.1 * torch.sin(2 * math.pi * 3.1 * freq * t)
    return wave.expand(channels, -1).clone()


# --------------------------------------------------------------------------- CLIP


def test_clip_score_is_scaled_cosine_of_the_embeddings(clip_score):
    x = images()
    got = clip_score(x, PROMPTS)
    assert got.shape == (2, 1) and got.dtype == torch.float32
    img, txt = clip_score.image.embed(x), clip_score.text.embed(PROMPTS)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(got[:, 0], 100 * (img * txt).sum(-1))
    # by hand from the raw towers: resize the short side to 32 and centre-crop, CLIP's mean/std
    import open_clip

    model = clip_score.image.model
    pix = torch.nn.functional.interpolate((x + 1) / 2, size=(32, 38), mode="bicubic", antialias=True)[..., 3:35]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    e_img = l2n(model.encode_image((pix - mean) / std))
    e_txt = l2n(model.encode_text(open_clip.get_tokenizer(TINY_CLIP)(PROMPTS)))
    torch.testing.assert_close(got[:, 0], 100 * (e_img * e_txt).sum(-1))


def test_clip_score_gradient_reaches_the_pixels(clip_score):
    x = images(h=32, w=32).requires_grad_(True)
    clip_score(x, PROMPTS).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in clip_score.image.model.parameters())


def test_video_score_is_the_mean_of_frame_scores():
    video_score = CLIPScore(model=register_tiny_clip(), pretrained=None, modality="video", device="cpu")
    image_score = CLIPScore(model=register_tiny_clip(), pretrained=None, device="cpu")
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    per_frame = torch.stack([image_score(video[:, :, f], PROMPTS) for f in range(4)])
    torch.testing.assert_close(video_score(video, PROMPTS), per_frame.mean(0))
    assert video_score.modality == "video" and video_score.image.model is image_score.image.model


def test_scale_options(clip_score):
    x = images()
    raw = clip_score(x, PROMPTS)[:, 0] / 100
    learned = CLIPScore(model=TINY_CLIP, pretrained=None, scale="logit_scale", device="cpu")
    assert learned.scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial temperature
    torch.testing.assert_close(learned(x, PROMPTS)[:, 0], learned.scale * raw)
    clamped = CLIPScore(model=TINY_CLIP, pretrained=None, clamp_zero=True, scale=2.5, device="cpu")
    torch.testing.assert_close(clamped(x, PROMPTS)[:, 0], (2.5 * raw).clamp(min=0))


def test_clip_score_rejects_bad_inputs(clip_score):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*modality='video'"):
        clip_score(torch.zeros(2, 3, 4, 32, 32), PROMPTS)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got \(2, 1, 32, 32\)"):
        clip_score(torch.zeros(2, 1, 32, 32), PROMPTS)
    with pytest.raises(TypeError, match="float tensor"):
        clip_score(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), PROMPTS)
    with pytest.raises(ValueError, match="3 prompts for 2 samples"):
        clip_score(images(), PROMPTS + ["x"])
    with pytest.raises(ValueError, match="needs prompts"):
        clip_score(images())


def test_clip_score_devices_and_dtypes(clip_score):
    x = images().double()
    out = clip_score(x, PROMPTS)
    assert out.dtype == torch.float32 and out.device == x.device
    torch.testing.assert_close(clip_score(x.float(), PROMPTS[0]), clip_score(x.float(), [PROMPTS[0]] * 2))
    if torch.cuda.is_available():  # model on the GPU, samples on the CPU: scores come back on the CPU
        gpu = CLIPScore(model=TINY_CLIP, pretrained=None, device="cuda")
        on_gpu = gpu(x.float(), PROMPTS)
        assert on_gpu.device == x.device
        torch.testing.assert_close(on_gpu, clip_score(x.float(), PROMPTS), atol=1e-3, rtol=1e-3)
        gpu.to("cpu")


def test_clip_score_builds_from_config():
    section = {"name": "clip_score", "model": register_tiny_clip(), "pretrained": None, "device": "cpu"}
    reward = registry.build("reward", validate_component("reward", section, "reward"))
    assert isinstance(reward, CLIPScore) and reward.dims == ("clip_score",) and reward.differentiable
    with pytest.raises(ConfigError, match="reward.modality.*'vidoe'.*did you mean 'video'"):
        validate_component("reward", {**section, "modality": "vidoe"}, "reward")
    with pytest.raises(ConfigError, match="reward.scal: unknown key; did you mean 'scale'"):
        validate_component("reward", {**section, "scal": 2.0}, "reward")


# --------------------------------------------------------------------------- CLAP (transformers backend)


def test_clap_score_is_scaled_cosine_and_matches_the_transformers_processor(clap_score, tiny_clap_dir):
    from transformers import ClapFeatureExtractor, ClapModel, RobertaTokenizer

    audio = torch.stack([tone(0.5, 48_000), tone(0.5, 48_000, freq=880.0)])  # [2, 1, 24000]
    got = clap_score(audio, PROMPTS, sample_rate=48_000)
    assert got.shape == (2, 1) and clap_score.sample_rate == 48_000 and clap_score.differentiable
    emb_a = clap_score.audio.embed(audio, sample_rate=48_000)
    emb_t = clap_score.text.embed(PROMPTS)
    torch.testing.assert_close(got[:, 0], 100 * (emb_a * emb_t).sum(-1))
    # the reference pipeline: transformers' numpy feature extractor + tokenizer + model
    fe = ClapFeatureExtractor.from_pretrained(tiny_clap_dir)
    model = ClapModel.from_pretrained(tiny_clap_dir).eval()
    tok = RobertaTokenizer.from_pretrained(tiny_clap_dir)
    assert len(tok) > 100
    with torch.no_grad():
        ref_a = model.get_audio_features(**fe([a[0].numpy() for a in audio], sampling_rate=48_000, return_tensors="pt"))
        ref_t = model.get_text_features(**tok(PROMPTS, padding=True, return_tensors="pt"))
    ref_a, ref_t = (l2n(getattr(r, "pooler_output", r)) for r in (ref_a, ref_t))
    torch.testing.assert_close(emb_a, ref_a, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(emb_t, ref_t)


@pytest.mark.parametrize("fused", [False, True])
def test_torch_logmel_matches_clap_feature_extractor(fused):
    from transformers import ClapFeatureExtractor

    import torchaudio

    fe = ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc")
    wave = tone(1.3, 48_000)  # shorter than a clip: repeat-padded by both
    ref = torch.as_tensor(fe(wave[0].numpy(), sampling_rate=48_000, return_tensors="np")["input_features"])[0, 0]
    fbank = torchaudio.functional.melscale_fbanks(513, 0.0, 14_000.0, 64, 48_000, norm=None if fused else "slaney",
                                                  mel_scale="htk" if fused else "slaney")
    got = clap_logmel(repeat_pad(wave.double(), 480_000), fbank, 1024, 480)[0]
    assert got.shape == ref.shape == (1001, 64)
    torch.testing.assert_close(got, ref.double(), atol=1e-3, rtol=0)  # dB
    single = clap_logmel(repeat_pad(wave, 480_000), fbank, 1024, 480)[0]  # fp32: off only in near-silent bins
    assert single.dtype == torch.float32 and (single - ref).abs().mean() < 0.01


def test_clap_resamples_and_mixes_to_mono(clap_score):
    import torchaudio

    stereo16k = torch.stack([torch.cat([tone(0.5, 16_000), tone(0.5, 16_000, freq=300.0)])])  # [1, 2, 8000]
    emb16 = clap_score.audio.embed(stereo16k, sample_rate=16_000)
    by_hand = torchaudio.functional.resample(stereo16k.mean(1, keepdim=True), 16_000, 48_000)
    torch.testing.assert_close(emb16, clap_score.audio.embed(by_hand, sample_rate=48_000))
    with pytest.raises(ValueError, match="sample_rate"):
        clap_score(stereo16k, PROMPTS[:1])
    with pytest.raises(ValueError, match=r"\[B, C, T\], got \(1, 8000\)"):
        clap_score(stereo16k[:, 0], PROMPTS[:1], sample_rate=16_000)


def test_clap_score_gradient_reaches_the_waveform(clap_score):
    audio = tone(0.25, 48_000)[None].requires_grad_(True)
    clap_score(audio, PROMPTS[:1], sample_rate=48_000).sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0


def test_clap_windows(clap_score, tiny_clap_dir):
    audio = tone(1.2, 16_000)[None]  # 1.2 s in 0.5 s windows every 0.5 s: 3 windows, the last repeat-padded
    windows = clap_score.audio.embed_windows(audio, sample_rate=16_000, window_s=0.5)
    assert windows.shape == (1, 3, 16)
    first = clap_score.audio.embed(audio[..., :8_000], sample_rate=16_000)
    # resampling the whole signal vs its first half-second differs only near the cut
    assert torch.nn.functional.cosine_similarity(windows[0, 0], first[0], dim=0) > 0.99
    overlapping = clap_score.audio.embed_windows(audio, sample_rate=16_000, window_s=0.5, hop_s=0.25)
    assert overlapping.shape == (1, 4, 16)
    frames = CLAPAudioEmbedder(str(tiny_clap_dir), frame_s=0.5, frame_hop_s=0.5, device="cpu")
    torch.testing.assert_close(frames.embed_frames(audio, sample_rate=16_000), windows)


def test_clap_score_builds_from_config(tiny_clap_dir):
    section = {"name": "clap_score", "model": str(tiny_clap_dir), "device": "cpu"}
    reward = registry.build("reward", validate_component("reward", section, "reward"))
    assert isinstance(reward, CLAPScore) and reward.modality == "audio" and reward.dims == ("clap_score",)
    with pytest.raises(ConfigError, match="reward.backend.*'laion-clap'.*did you mean 'laion_clap'"):
        validate_component("reward", {**section, "backend": "laion-clap"}, "reward")
    with pytest.raises(ConfigError, match="enable_fusion is a laion_clap option"):
        registry.build("reward", validate_component("reward", {**section, "enable_fusion": True}, "reward"))


# --------------------------------------------------------------------------- other CLAP backends


def _open_clip_has_clap() -> bool:
    import open_clip

    return any(name.startswith("CLAP") for name in open_clip.list_models())


def test_open_clip_backend_without_clap_configs_fails_clearly():
    if _open_clip_has_clap():
        pytest.skip("this open_clip ships CLAP configs")
    with pytest.raises(ValueError, match="ships no CLAP models.*backend='transformers'"):
        CLAPScore(backend="open_clip", device="cpu")


@pytest.mark.slow  # HTSAT-tiny is the smallest open_clip audio tower (28M parameters): ~30 s on 2 CPU cores
@pytest.mark.skipif(not _open_clip_has_clap(), reason="open_clip releases up to 3.3 ship no CLAP configs")
def test_open_clip_clap_backend():
    import open_clip

    name = "mmalign-test-tiny-clap"
    if name not in open_clip.list_models():
        cfg = {"embed_dim": 16,
               "audio_cfg": {"audio_length": 1024, "clip_samples": 480000, "mel_bins": 64, "sample_rate": 48000,
                             "window_size": 1024, "hop_size": 480, "fmin": 50, "fmax": 14000, "class_num": 527,
                             "model_type": "HTSAT", "model_name": "tiny"},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
        path = Path(tempfile.mkdtemp()) / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    reward = CLAPScore(model=name, backend="open_clip", device="cpu")
    assert reward.sample_rate == 48_000
    audio = tone(0.5, 16_000)[None].requires_grad_(True)
    got = reward(audio, PROMPTS[:1], sample_rate=16_000)
    emb = reward.audio.embed(audio, sample_rate=16_000)
    torch.testing.assert_close(got[:, 0], 100 * (emb * reward.text.embed(PROMPTS[:1])).sum(-1))
    got.sum().backward()
    assert torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0


LAION_SCRIPT = r"""
import sys, torch
import laion_clap  # loads roberta-base (and bert/bart) tokenizers from HF_HOME on import
from mmalign.rewards.clap import CLAPScore
reward = CLAPScore(backend="laion_clap", device="cpu")
t = torch.arange(24000) / 48000
audio = (0.5 * torch.sin(2 * torch.pi * 440 * t))[None, None].repeat(2, 1, 1)
got = reward(audio, ["a tone", "a dog barking"], sample_rate=48000)
emb = reward.audio.embed(audio, sample_rate=48000)
ref = torch.nn.functional.normalize(reward.audio.clap.clap.get_audio_embedding_from_data(
    audio[:, 0].repeat(1, 20), use_tensor=True), dim=-1)
assert got.shape == (2, 1), got.shape
torch.testing.assert_close(emb, ref)
print("LAION_OK", reward.sample_rate, tuple(emb.shape))
"""


def write_standin_hub_cache(home: Path) -> Path:
    """HF_HOME holding a random 1-layer roberta-base (hidden 768, as laion_clap's text projection needs)
    and a locally trained tokenizer, in the hub's cache layout."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    from mmalign.utils.tiny_diffusers import train_tokenizer

    snap = home / "hub" / "models--roberta-base" / "snapshots" / ("0" * 40)
    tok = train_tokenizer(RobertaTokenizer, model_max_length=512)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                        intermediate_size=64, max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaModel(cfg).save_pretrained(snap)
    tok.save_pretrained(snap)
    refs = home / "hub" / "models--roberta-base" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text("0" * 40)
    return home


@pytest.mark.slow  # laion_clap's HTSAT-tiny in a fresh interpreter: ~40 s on 2 CPU cores
@pytest.mark.skipif(importlib.util.find_spec("laion_clap") is None, reason="laion-clap not installed (mmalign[clap])")
def test_laion_clap_backend_with_a_standin_hub_cache(tmp_path):
    home = write_standin_hub_cache(tmp_path / "hf")
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", LAION_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert "LAION_OK 48000 (2, 512)" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]

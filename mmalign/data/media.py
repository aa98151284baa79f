"""Reading, writing and checking the media of image / video / audio preference data.

Loaders return float32 tensors in [-1, 1]: images ``[3, H, W]``, videos ``[3, F, H, W]``, audio
``[C, T]``. A missing, unreadable or wrongly shaped file raises :class:`MediaError` (a
:class:`DataError`); :func:`check_media` re-raises it naming the data file, line and field:
``pairs.jsonl:7: field 'chosen_video': /data/clip.mp4: has 4 frames, need 16``.

Images: PIL. Videos: MP4/MOV/WebM/MKV/AVI via PyAV (``av``), GIF / animated WebP via PIL, or a
directory of frame images. Audio: WAV/FLAC/OGG via ``soundfile``, resampled with
``torchaudio.functional.resample`` (``torchaudio.load`` needs TorchCodec, so it is not used).
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from mmalign.data.pairs import DataError

Size = int | tuple[int, int] | None
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
CONTAINER_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}
MODALITIES = ("image", "video", "audio")


class MediaError(DataError):
    """A media file that is missing, unreadable or wrongly shaped; ``reason`` is the bare message."""

    def __init__(self, source: str, line: int | None, field_name: str | None, message: str):
        super().__init__(str(source), line, field_name, message)
        self.reason = message


def _fail(path: str | Path, message: str) -> MediaError:
    return MediaError(str(path), None, None, message)


def _exists(path: Path, dir_ok: bool = False) -> None:
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir() and not dir_ok:
        raise _fail(path, "is a directory, expected a file")


def resolve_media_path(value: str | os.PathLike, jsonl_path: str | os.PathLike) -> Path:
    """Resolve a record's media path: relative paths are relative to the data file's folder.

    Args:
        value: ``"img/0001.png"``, ``"~/clips/a.mp4"`` or an absolute path.
        jsonl_path: the JSONL/JSON/Parquet file holding the record (a ``datasets`` directory is
            itself the base).
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"expected a non-empty media path, got {value!r}")
    path, base = Path(value).expanduser(), Path(jsonl_path)
    return path if path.is_absolute() else (base if base.is_dir() else base.parent) / path


# --------------------------------------------------------------------------- images


def _rgb(img):
    """Any PIL mode -> RGB: transparency is composited on white, 16-bit / float gray rescaled."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # convert("RGB") would clip at 255
        arr = np.asarray(img, dtype=np.float32) / (1.0 if img.mode == "F" else 65535.0)
        img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


def _fit(img, size: Size):
    """Resize (bicubic, antialiased) to cover ``size`` = S or (H, W), then center-crop to it."""
    if size is None:
        return img
    height, width = (size, size) if isinstance(size, int) else size
    scale = max(height / img.height, width / img.width)
    new_w, new_h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def _to_tensor(img) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def _open_rgb(path: Path):
    _exists(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not in a training step
            return _rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise _fail(path, f"unreadable image ({err})") from None


def load_image(path: str | Path, size: Size = None) -> torch.Tensor:
    """Load a PNG / JPEG / WebP / BMP / TIFF image as RGB (alpha on white, EXIF rotation applied).

    Args:
        size: ``None`` keeps the native size; ``S`` or ``(H, W)`` resizes (bicubic, antialiased)
            to cover the target and center-crops to it.

    Returns:
        ``[3, H, W]`` float32 in [-1, 1].
    """
    return _to_tensor(_fit(_open_rgb(Path(path)), size))


# --------------------------------------------------------------------------- video


def _frame_indices(total: int, num_frames: int | None, sampling: str, path: Path) -> list[int]:
    if sampling not in ("uniform", "first") or (num_frames is not None and num_frames < 1):
        raise ValueError(f"need sampling 'uniform' or 'first' and num_frames >= 1, got {sampling!r}, {num_frames}")
    if num_frames is None:
        return list(range(total))
    if total < num_frames:
        raise _fail(path, f"has {total} frames, need {num_frames}")
    if sampling == "first":
        return list(range(num_frames))
    return [round(i * (total - 1) / max(num_frames - 1, 1)) for i in range(num_frames)]


def _container_frames(path: Path, num_frames: int | None, sampling: str) -> list:
    try:
        import av
    except ImportError:
        raise _fail(path, "reading MP4/MOV/WebM/MKV/AVI needs PyAV: pip install av") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _fail(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = []  # decoded frames stay YUV until selected
            for frame in container.decode(stream):
                frames.append(frame)
                if sampling == "first" and num_frames is not None and len(frames) >= num_frames:
                    break
            return [frames[i].to_image() for i in _frame_indices(len(frames), num_frames, sampling, path)]
    except av.error.FFmpegError as err:
        raise _fail(path, f"unreadable video ({err})") from None


def _animation_frames(path: Path) -> list:
    """All frames of a GIF / animated WebP; a frame shown k times as long as the shortest is repeated k times."""
    try:
        with Image.open(path) as img:
            frames = [(_rgb(f.copy()), f.info.get("duration") or 0) for f in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise _fail(path, f"unreadable animation ({err})") from None
    base = min((d for _, d in frames), default=0)  # GIF writers (PIL's too) merge identical consecutive frames
    return [f for f, d in frames for _ in range(max(1, round(d / base)) if base > 0 else 1)]


def load_video(path: str | Path, num_frames: int | None = None, size: Size = None, *,
               sampling: str = "uniform") -> torch.Tensor:
    """Load a video clip.

    Args:
        path: an MP4/MOV/WebM/MKV/AVI file (PyAV), a GIF or animated WebP (PIL; frames merged by
            the writer are repeated back), or a directory of frame images in natural name order
            (``f2.png`` before ``f10.png``; other files ignored).
        num_frames: ``None`` keeps every frame. Otherwise ``sampling="uniform"`` (default) takes
            ``num_frames`` evenly spaced frames spanning the clip, first and last included;
            ``sampling="first"`` takes the first ``num_frames``. A shorter clip raises
            :class:`MediaError`.
        size: as in :func:`load_image`, applied to every frame.

    Returns:
        ``[3, F, H, W]`` float32 in [-1, 1].
    """
    path = Path(path)
    _exists(path, dir_ok=True)
    if path.is_dir():
        natural = lambda p: [int(s) if i % 2 else s for i, s in enumerate(re.split(r"(\d+)", p.name))]  # noqa: E731
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        files.sort(key=natural)
        if not files:
            raise _fail(path, f"directory holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images = [_open_rgb(files[i]) for i in _frame_indices(len(files), num_frames, sampling, path)]
    elif path.suffix.lower() in CONTAINER_SUFFIXES:
        images = _container_frames(path, num_frames, sampling)
    else:
        images = _animation_frames(path)
        images = [images[i] for i in _frame_indices(len(images), num_frames, sampling, path)]
    if not images:
        raise _fail(path, "no frames")
    frames = [_to_tensor(_fit(img, size)) for img in images]
    if len({f.shape for f in frames}) > 1:
        raise _fail(path, f"frames differ in size {sorted({tuple(f.shape) for f in frames})}; pass size=")
    return torch.stack(frames, dim=1)


# --------------------------------------------------------------------------- audio


def load_audio(path: str | Path, sample_rate: int | None, seconds: float | None = None,
               channels: int = 1) -> torch.Tensor:
    """Load audio (WAV, FLAC, OGG: whatever libsndfile reads), resampled and shaped.

    Args:
        sample_rate: target rate in Hz (``None`` keeps the file's rate).
        seconds: crop (keeping the start) or zero-pad (at the end) to ``round(seconds * rate)``
            samples; ``None`` keeps the full length.
        channels: 1 averages all channels; 2 duplicates mono, keeps stereo and takes the first two
            channels (front left/right) of multichannel audio.

    Returns:
        ``[channels, T]`` float32, clamped to [-1, 1] (resampling can ring slightly past it).
    """
    if channels not in (1, 2) or (seconds is not None and seconds <= 0):
        raise ValueError(f"need channels in (1, 2) and seconds > 0, got {channels} and {seconds}")
    path = Path(path)
    _exists(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (RuntimeError, TypeError, ValueError) as err:  # sf.LibsndfileError is a RuntimeError
        raise _fail(path, f"unreadable audio ({err})") from None
    if data.shape[0] == 0:
        raise _fail(path, "audio has zero length")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    if channels == 1:
        wave = wave.mean(dim=0, keepdim=True)
    else:
        wave = wave.expand(2, -1).clone() if wave.shape[0] == 1 else wave[:2]
    if sample_rate is not None and sample_rate != rate:
        import torchaudio.functional as AF

        wave, rate = AF.resample(wave, rate, sample_rate), sample_rate
    if seconds is not None:
        length = round(seconds * rate)
        wave = torch.nn.functional.pad(wave[:, :length], (0, max(0, length - wave.shape[1])))
    return wave.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- writers


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> ``[..., H, W, 3]`` uint8."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


def _out(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Write ``images`` ``[N, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1] as one PNG grid.

    Args:
        nrow: images per row. padding: pixels of black border around each image.
    """
    images = images.unsqueeze(0) if images.dim() == 3 else images
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    n, _, h, w = images.shape  # same layout as torchvision's make_grid
    rows, cols = math.ceil(n / nrow), min(nrow, n)
    grid = torch.full((3, rows * (h + padding) + padding, cols * (w + padding) + padding), -1.0)
    for i, img in enumerate(images.detach().float().cpu()):
        y, x = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, y : y + h, x : x + w] = img
    Image.fromarray(_to_uint8(grid)).save(path := _out(path))
    return path


def save_video(video: torch.Tensor, path: str | Path, fps: float = 8) -> Path:
    """Write ``video`` ``[3, F, H, W]`` in [-1, 1] as ``.gif`` (PIL, looping) or ``.mp4`` (PyAV).

    GIF is palette-quantized (256 colours) and stores identical consecutive frames as one longer
    frame (:func:`load_video` repeats it back). MP4 is H.264 at CRF 18 (``mpeg4`` if libx264 is
    missing) in yuv420p, which needs even sizes: an odd H or W gets one replicated edge row/column.
    """
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected video [3, F, H, W], got {tuple(video.shape)}")
    frames, path = _to_uint8(video.permute(1, 0, 2, 3)), Path(path)  # [F, H, W, 3]
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(_out(path), save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif suffix in CONTAINER_SUFFIXES:
        try:
            import av
        except ImportError:
            raise ImportError(f"writing {suffix} needs PyAV: pip install av (or save a .gif)") from None
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with av.open(str(_out(path)), mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": "18"} if codec == "libx264" else {}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush
    else:
        raise ValueError(f"unsupported video suffix {suffix!r}; use .gif or .mp4")
    return path


def save_audio(audio: torch.Tensor, path: str | Path, sample_rate: int, subtype: str | None = None) -> Path:
    """Write ``audio`` ``[C, T]`` (or ``[T]``) in [-1, 1] to ``.wav`` / ``.flac`` / ``.ogg`` with soundfile.

    Args:
        subtype: soundfile subtype; WAV defaults to 16-bit PCM, ``"FLOAT"`` keeps float32.
    """
    audio = audio.unsqueeze(0) if audio.dim() == 1 else audio
    sf.write(str(path := _out(path)), audio.detach().float().cpu().clamp(-1, 1).T.numpy(), sample_rate, subtype=subtype)
    return path


def save_spectrogram_png(audio: torch.Tensor, sample_rate: int, path: str | Path, n_mels: int = 64) -> Path:
    """Plot the log-mel spectrogram of ``audio`` ``[C, T]`` (or ``[T]``), one panel per channel, to a PNG."""
    import torchaudio
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    audio = (audio.unsqueeze(0) if audio.dim() == 1 else audio).detach().float().cpu()
    n_fft = min(1024, 2 ** max(4, int(math.log2(max(audio.shape[1], 2)))))  # short clips get a short window
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels)
    db = torchaudio.transforms.AmplitudeToDB(top_db=80)(mel(audio))
    fig = Figure(figsize=(8, 2.5 * len(db)), layout="constrained")
    FigureCanvasAgg(fig)
    for c, spec in enumerate(db):
        ax = fig.add_subplot(len(db), 1, c + 1)
        extent = (0, audio.shape[1] / sample_rate, 0, n_mels)
        fig.colorbar(ax.imshow(spec.numpy(), origin="lower", aspect="auto", extent=extent, cmap="magma"),
                     ax=ax, label="dB")
        ax.set(xlabel="time (s)", ylabel="mel bin", title=f"channel {c}" if len(db) > 1 else "")
    fig.savefig(path := _out(path), dpi=100)
    return path


# --------------------------------------------------------------------------- validation


def check_media(path, modality: str, *, source: str, line: int | None, field: str, **expect) -> torch.Tensor:
    """Decode one media file fully, as training would, or raise :class:`MediaError` naming the record.

    Args:
        path: the media path, already resolved (:func:`resolve_media_path`).
        modality: ``"image"``, ``"video"`` or ``"audio"``.
        source, line, field: the data file, the record's line (row) and field, for the message.
        **expect: loader arguments: ``size`` (image, video), ``num_frames`` and ``sampling``
            (video), ``sample_rate``, ``seconds`` and ``channels`` (audio).

    Returns:
        The loaded tensor, as :func:`load_image` / :func:`load_video` / :func:`load_audio` return it.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise MediaError(source, line, field, f"expected a path to the {modality}, got {path!r}")
    loader = {"image": load_image, "video": load_video, "audio": load_audio}[modality]
    if modality == "audio":
        expect.setdefault("sample_rate", None)
    try:
        return loader(path, **expect)
    except MediaError as err:  # err.source is the media file (the bad frame, for a frame directory)
        raise MediaError(source, line, field, f"{err.source}: {err.reason}") from None

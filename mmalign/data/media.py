"""Reading, writing and checking the media of image / video / audio preference data.

Every loader returns float tensors in ``[-1, 1]``: images ``[3, H, W]``, videos ``[3, F, H, W]``,
audio ``[C, T]``. A file that is missing, unreadable or of the wrong shape raises
:class:`MediaError`; :func:`check_media` turns that into a :class:`DataError` naming the data
file, its line and the field, e.g. ``pairs.jsonl:7: field 'chosen_video': clip.mp4: has 4 frames,
need 16``.

Readers: images via PIL (PNG, JPEG, WebP, ...); videos from MP4/MOV/WebM/MKV/AVI via PyAV (``av``),
from GIF / animated WebP via PIL, or from a directory of frame images; audio (WAV, FLAC, OGG)
via ``soundfile``, resampled with ``torchaudio.functional.resample``.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

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


# --------------------------------------------------------------------------- paths


def resolve_media_path(value: str | os.PathLike, jsonl_path: str | os.PathLike) -> Path:
    """Resolve a media path from a data record; relative paths are relative to the data file's folder.

    Args:
        value: the record's path (``"img/0001.png"``, ``"~/clips/a.mp4"`` or absolute).
        jsonl_path: the JSONL/JSON/Parquet file the record came from (or a ``datasets`` directory,
            which is then itself the base).
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"expected a non-empty media path, got {value!r}")
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    base = Path(jsonl_path)
    return (base if base.is_dir() else base.parent) / path


# --------------------------------------------------------------------------- images


def _rgb(img):
    """Any PIL mode -> RGB; transparency is composited on white, 16-bit/float gray is rescaled."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32) / (1.0 if img.mode == "F" else 65535.0)
        return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _fit(img, size: Size):
    """Resize (bicubic, antialiased) so ``size`` = (H, W) is covered, then center-crop to it."""
    if size is None:
        return img
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    scale = max(height / img.height, width / img.width)
    new_w, new_h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def _to_tensor(img) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def _exists(path: Path, dir_ok: bool = False) -> None:
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir() and not dir_ok:
        raise _fail(path, "is a directory, expected a file")


def load_image(path: str | Path, size: Size = None) -> torch.Tensor:
    """Load an image as RGB (alpha composited on white; EXIF rotation applied).

    Args:
        path: PNG, JPEG, WebP, BMP or TIFF file.
        size: ``None`` keeps the native size; ``S`` or ``(H, W)`` resizes (bicubic, antialiased)
            to cover the target and center-crops to it.

    Returns:
        ``[3, H, W]`` float32 in [-1, 1].
    """
    return _to_tensor(_fit(_open_rgb(Path(path)), size))


def _open_rgb(path: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    _exists(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            return _rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise _fail(path, f"unreadable image ({err})") from None


# --------------------------------------------------------------------------- video


def _natural_key(name: str):
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _frame_indices(total: int, num_frames: int | None, sampling: str, path: Path) -> list[int]:
    if num_frames is None:
        return list(range(total))
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if total < num_frames:
        raise _fail(path, f"has {total} frames, need {num_frames}")
    if sampling == "first":
        return list(range(num_frames))
    if sampling != "uniform":
        raise ValueError(f"sampling must be 'uniform' or 'first', got {sampling!r}")
    return [round(i * (total - 1) / max(num_frames - 1, 1)) for i in range(num_frames)]


def _container_frames(path: Path, num_frames: int | None, sampling: str) -> list:
    try:
        import av
    except ImportError:
        raise _fail(path, "reading MP4/MOV/WebM needs PyAV: pip install av") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _fail(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = []
            for frame in container.decode(stream):  # kept as YUV until selected: less memory
                frames.append(frame)
                if sampling == "first" and num_frames is not None and len(frames) >= num_frames:
                    break
            index = _frame_indices(len(frames), num_frames, sampling, path)
            return [frames[i].to_image() for i in index]
    except av.FFmpegError as err:
        raise _fail(path, f"unreadable video ({err})") from None


def _pil_animation_frames(path: Path) -> list:
    """All frames of a GIF / animated WebP; a frame shown k times as long is repeated k times."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(img):
                frames.append(_rgb(frame.copy()))
                durations.append(frame.info.get("duration") or 0)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise _fail(path, f"unreadable animation ({err})") from None
    # GIF writers (PIL included) merge identical consecutive frames into one longer frame.
    if len(frames) > 1 and min(durations) > 0:
        base = min(durations)
        frames = [f for f, d in zip(frames, durations) for _ in range(max(1, round(d / base)))]
    return frames


def _directory_frames(path: Path) -> list:
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise _fail(path, f"directory holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_video(path: str | Path, num_frames: int | None = None, size: Size = None, *,
               sampling: str = "uniform") -> torch.Tensor:
    """Load a video clip.

    Args:
        path: an MP4/MOV/WebM/MKV/AVI file (PyAV), a GIF or animated WebP (PIL), or a directory
            of frame images ordered by natural sort of their names (``f2.png`` before ``f10.png``).
        num_frames: ``None`` keeps every frame. Otherwise ``sampling="uniform"`` (default) takes
            ``num_frames`` evenly spaced frames spanning the whole clip, first and last included,
            and ``sampling="first"`` the first ``num_frames`` consecutive frames. A clip with
            fewer frames raises :class:`MediaError`.
        size: as in :func:`load_image`, applied to every frame.
        sampling: ``"uniform"`` or ``"first"``.

    Returns:
        ``[3, F, H, W]`` float32 in [-1, 1].
    """
    path = Path(path)
    _exists(path, dir_ok=True)
    if path.is_dir():
        files = _directory_frames(path)
        index = _frame_indices(len(files), num_frames, sampling, path)
        frames = [_to_tensor(_fit(_open_rgb(files[i]), size)) for i in index]
    else:
        if path.suffix.lower() in CONTAINER_SUFFIXES:
            images = _container_frames(path, num_frames, sampling)
        else:
            images = _pil_animation_frames(path)
            images = [images[i] for i in _frame_indices(len(images), num_frames, sampling, path)]
        frames = [_to_tensor(_fit(img, size)) for img in images]
    if not frames:  # a container whose video stream decodes to nothing
        raise _fail(path, "no frames")
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        raise _fail(path, f"frames differ in size {sorted(shapes)}; pass size= to resize them")
    return torch.stack(frames, dim=1)


# --------------------------------------------------------------------------- audio


def load_audio(path: str | Path, sample_rate: int | None, seconds: float | None = None,
               channels: int = 1) -> torch.Tensor:
    """Load audio, resample it, fix its channel count and (optionally) its duration.

    Args:
        path: WAV, FLAC, OGG (or anything libsndfile reads).
        sample_rate: target rate in Hz (``None``: keep the file's rate).
        seconds: crop (from the start) or zero-pad (at the end) to ``round(seconds * sample_rate)``
            samples; ``None`` keeps the full length.
        channels: 1 mixes all channels to mono by averaging; 2 duplicates a mono file, keeps a
            stereo one and takes the first two channels (front left/right) of a multichannel one.

    Returns:
        ``[channels, T]`` float32, clamped to [-1, 1] (resampling can ring slightly past it).
    """
    import soundfile as sf

    if channels not in (1, 2) or (seconds is not None and seconds <= 0):
        raise ValueError(f"need channels in (1, 2) and seconds > 0, got {channels} and {seconds}")
    path = Path(path)
    _exists(path)
    try:
        data, native_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise _fail(path, f"unreadable audio ({err})") from None
    if data.shape[0] == 0:
        raise _fail(path, "audio has zero length")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # [C, T]
    if channels == 1:
        wave = wave.mean(dim=0, keepdim=True)
    else:
        wave = wave.expand(2, -1).clone() if wave.shape[0] == 1 else wave[:2]
    if sample_rate is not None and sample_rate != native_rate:
        import torchaudio.functional as AF

        wave = AF.resample(wave, native_rate, sample_rate)
    rate = sample_rate or native_rate
    if seconds is not None:
        length = round(seconds * rate)
        wave = wave[:, :length] if wave.shape[1] >= length else torch.nn.functional.pad(wave, (0, length - wave.shape[1]))
    return wave.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- writers


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> ``[..., H, W, 3]`` uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Write ``images`` ``[N, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1] as one PNG grid.

    Args:
        nrow: images per row. padding: pixels of black border around each image.
    """
    from PIL import Image
    from torchvision.utils import make_grid

    images = images.unsqueeze(0) if images.dim() == 3 else images
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding, pad_value=-1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(grid)).save(path)
    return path


def save_video(video: torch.Tensor, path: str | Path, fps: float = 8) -> Path:
    """Write a clip as ``.gif`` (PIL, 256-colour palette, looping) or ``.mp4`` (PyAV, H.264, CRF 18).

    Args:
        video: ``[3, F, H, W]`` in [-1, 1]. For MP4, odd H or W is padded by one edge row/column.
        path: output file; the suffix picks the writer.
        fps: frames per second.
    """
    from PIL import Image

    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected video [3, F, H, W], got {tuple(video.shape)}")
    frames = _to_uint8(video.permute(1, 0, 2, 3))  # [F, H, W, 3]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif suffix in CONTAINER_SUFFIXES:
        try:
            import av
        except ImportError:
            raise ImportError(f"writing {suffix} needs PyAV: pip install av (or save as .gif)") from None

        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p needs even sizes
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": "18"} if codec == "libx264" else {}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    else:
        raise ValueError(f"unsupported video suffix {suffix!r}; use .gif or .mp4")
    return path


def save_audio(audio: torch.Tensor, path: str | Path, sample_rate: int, subtype: str | None = None) -> Path:
    """Write ``audio`` ``[C, T]`` (or ``[T]``) in [-1, 1] to ``.wav`` / ``.flac`` / ``.ogg`` with soundfile.

    Args:
        subtype: soundfile subtype; the default for WAV is 16-bit PCM, ``"FLOAT"`` keeps float32.
    """
    import soundfile as sf

    audio = audio.unsqueeze(0) if audio.dim() == 1 else audio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.detach().float().cpu().clamp(-1, 1).T.numpy(), sample_rate, subtype=subtype)
    return path


def save_spectrogram_png(audio: torch.Tensor, sample_rate: int, path: str | Path, n_mels: int = 64) -> Path:
    """Plot a log-mel spectrogram (one panel per channel) of ``audio`` ``[C, T]`` or ``[T]`` to a PNG."""
    import torchaudio
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    audio = (audio.unsqueeze(0) if audio.dim() == 1 else audio).detach().float().cpu()
    n_fft = min(1024, 2 ** max(4, int(math.log2(max(audio.shape[1], 2)))))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels)(audio)
    db = torchaudio.transforms.AmplitudeToDB(top_db=80)(mel)
    fig = Figure(figsize=(8, 2.5 * len(db)), layout="constrained")
    FigureCanvasAgg(fig)
    for c, spec in enumerate(db):
        ax = fig.add_subplot(len(db), 1, c + 1)
        seconds = audio.shape[1] / sample_rate
        im = ax.imshow(spec.numpy(), origin="lower", aspect="auto", extent=(0, seconds, 0, n_mels), cmap="magma")
        ax.set(xlabel="time (s)", ylabel="mel bin")
        if len(db) > 1:
            ax.set_title(f"channel {c}")
        fig.colorbar(im, ax=ax, label="dB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------- validation


def check_media(path, modality: str, *, source: str, line: int | None, field: str, **expect) -> torch.Tensor:
    """Decode one media file fully, as training would, or raise :class:`MediaError` naming the record.

    Args:
        path: the (resolved, see :func:`resolve_media_path`) media path.
        modality: ``"image"``, ``"video"`` or ``"audio"``.
        source, line, field: the data file, its line (row) and the record's field, for the message.
        **expect: arguments of the loader: ``size`` (image/video), ``num_frames`` and ``sampling``
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
    except MediaError as err:  # err.source is the media file (a frame file, for a frame directory)
        raise MediaError(source, line, field, f"{err.source}: {err.reason}") from None

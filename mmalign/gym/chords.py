"""The audio world "chords": short synthesised notes and chords from prompts like "a C major chord, soft".

- **Clips**: 0.512 s of mono audio at 4 kHz (2,048 samples): a root from C D E F G A B in octave 3
  (C3 = 130.8 Hz ... B3 = 246.9 Hz) × a quality (major chord = root, +4, +7 semitones; minor chord =
  root, +3, +7; single note = root) × a timbre (``soft``: a sine, 30 ms attack, 1 s decay; ``bright``:
  square-ish, the odd harmonics 1, 3, 5, ... at amplitude 1/n below 1.9 kHz, 5 ms attack, 0.35 s
  decay), see :func:`note_wave` / :func:`synth_clip`. Every fundamental lies in MIDI 48..66
  (130.8--370 Hz) and every harmonic of a bright note (3f, 5f, ...) above 380 Hz, so the band of
  fundamentals holds only fundamentals.
- **Base** (``assets/gym/chords/base``, rebuilt by ``examples/build_gym_chords.py``): a tiny stock
  ``StableAudioPipeline``. Its ``AutoencoderOobleck`` is set analytically (one latent frame of 40
  channels per clip: the amplitudes of 38 note atoms -- 19 notes × 2 timbres, partials at phase 0 --
  and of 2 fixed noise atoms; decode = their sum, encode = least squares), because a conv codec
  trained for a few CPU minutes did not learn pitch; its ``StableAudioDiTModel`` and T5 are trained
  with the cosine v-objective of :class:`~mmalign.adapters.diffusion_families.StableAudio` on
  synthesised clips of which 30% have captions re-drawn at random (root, quality and timbre), 20%
  carry broadband noise and 10% are overdriven past full scale (neither ever captioned). So the
  base is imperfect on every dimension: it blends or swaps chords, adds noise, clips, and
  sometimes plays the other timbre (measured numbers in ``assets/gym/chords/build.json``).
- **Prompts**: nine caption templates × 7 roots × 3 qualities × 2 timbres. The base saw every template
  in pretraining; preference data uses the six *train* templates, evaluation the three held-out
  *eval* templates (:data:`TRAIN_TEMPLATES`, :data:`EVAL_TEMPLATES`), so the splits are disjoint as
  strings and an aligned model is measured on phrasings its preference data never contained (the
  42 (root, quality, timbre) contents are shared by both splits, as the ten digits are in "digits").
- **Reward** ``gym_chords`` with dims ``(pitch, quality, timbre)``, each in [0, 1], higher is better
  (:func:`chord_scores`); it reads the notes and timbre from the prompt (:func:`parse_prompt`),
  mixes channels to mono and resamples audio at another ``sample_rate`` to 4 kHz. From the
  Hann-windowed spectrum of the whole clip:

  - ``pitch`` = precision × coverage over the 21 semitone bins MIDI 46..66 (±50 cents each):
    precision = the prompted notes' share of the band's energy, coverage = the mean over the
    prompted notes of min(1, share / (½ · 1/n_notes)) (a note counts fully with half its fair
    share). 1 for the right notes (in any reasonable balance); 0.44 for a minor chord asked as
    major; 1/3 for a single note asked as a chord or a chord asked as a note; 0 for a chord on a
    wrong root or silence; 0.5 for an even blend of the right chord and a disjoint one;
  - ``quality`` = level × no-clipping × no-noise: level = min(1, rms / 0.02) (silence → 0);
    no-clipping = 1 − min(1, share of samples with |x| ≥ 0.99 / 0.05); no-noise maps the
    spectral flatness (geometric / arithmetic mean of the power spectrum above 30 Hz) linearly in
    log10 from 1 at ≤ 1e-3 (white noise ≈ 27 dB below the notes, or less) to 0 at ≥ 0.05 (≈ 10 dB);
  - ``timbre``: the bright ratio r = energy within ±50 cents of the 3rd and 5th harmonics of the
    notes present (≥ 10% of the band's energy, C3 and up) over those notes' energy (a square wave:
    1/9 + 1/25 ≈ 0.15; a sine: 0) gives brightness b = clip((log10 r + 2.5) / 1.5, 0, 1);
    timbre = b when the prompt asks "bright", 1 − b for "soft", 1 when it names no timbre.

- **Features** for Vendi (:func:`chord_features`): the 12-bin chroma of the fundamental band, the
  brightness, no-noise, no-clipping and level terms, and an 8-segment RMS envelope (peak 1) -- 24
  numbers, also usable as a DRAGON embedder: ``{type: callable, fn: "mmalign.gym.chords:chord_features",
  modality: audio}``.
- **Exemplars** (``assets/gym/chords/exemplars``, :attr:`Chords.exemplar_dir`): 16 WAVs of one target
  style -- clean soft major chords at a moderate level, every root, made of the base's own atoms so
  the style is reachable -- with ``metadata.jsonl`` captions, for DRAGON's exemplar rewards.
"""

from __future__ import annotations

import math
import random
import re

import torch

from mmalign import registry
from mmalign.gym.base import ASSETS, World, register_world
from mmalign.rewards.base import Reward

SAMPLE_RATE = 4000
SECONDS = 0.512  # 2,048 samples: one latent frame of the base's VAE (hop 2048)
NUM_SAMPLES = round(SAMPLE_RATE * SECONDS)
OCTAVE_BASE = 48  # MIDI of C3: roots are C3..B3
ROOTS = ("C", "D", "E", "F", "G", "A", "B")
PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
QUALITIES = ("major", "minor", "note")
INTERVALS = {"major": (0, 4, 7), "minor": (0, 3, 7), "note": (0,)}
TIMBRES = ("soft", "bright")
BAND = (46, 66)  # MIDI range (inclusive) of the fundamentals' semitone bins: A#2..F#4
HARMONIC_LIMIT = 1900.0  # Hz: bright partials stop below this (Nyquist 2 kHz)

TRAIN_TEMPLATES = (
    "a {what}, {timbre}", "{timbre} {what}", "a {timbre} {what}", "the {what}, {timbre} tone",
    "{what} with a {timbre} tone", "synth {what}, {timbre}",
)
EVAL_TEMPLATES = ("play a {what}, {timbre} timbre", "{timbre} sound of a {what}", "a {what} in a {timbre} voice")

# Reward constants (see the module docstring)
LEVEL_RMS = 0.02
PRESENT_SHARE = 0.1  # a note counts as present for the timbre with this share of the band's energy
COVER_SHARE = 0.5  # a prompted note is fully present with half its fair share of the band's energy
CLIP_LEVEL, CLIP_SHARE = 0.99, 0.05
FLAT_GOOD, FLAT_BAD = 1e-3, 0.05
BRIGHT_LOG_LO, BRIGHT_LOG_HI = -2.5, -1.0

_ROOT_RE = re.compile(r"(?<![A-Za-z#])([A-G])([#b]?) (major|minor|note)\b")
_TIMBRE_RE = re.compile(r"\b(soft|bright)\b", re.IGNORECASE)


def what_phrase(root: str, quality: str) -> str:
    """``"C major chord"``, ``"C minor chord"`` or ``"C note"``."""
    return f"{root} note" if quality == "note" else f"{root} {quality} chord"


def chord_prompt(root: str, quality: str, timbre: str, template: str = TRAIN_TEMPLATES[0]) -> str:
    return template.format(what=what_phrase(root, quality), timbre=timbre)


def all_contents() -> list[tuple[str, str, str]]:
    """The 42 (root, quality, timbre) contents, in a fixed order."""
    return [(r, q, t) for r in ROOTS for q in QUALITIES for t in TIMBRES]


def parse_prompt(prompt: str) -> tuple[tuple[int, ...], str | None]:
    """``(MIDI notes, timbre)`` a prompt asks for: ``"a C major chord, soft"`` → ``((48, 52, 55), "soft")``.

    The root is a capital A-G (optionally ``#``/``b``) followed by "major", "minor" or "note"; it sits
    in octave 3 (C3 = MIDI 48). The timbre is the first "soft" or "bright" (``None`` when absent).
    Raises ``ValueError`` when no root is found.
    """
    m = _ROOT_RE.search(prompt)
    if m is None:
        raise ValueError(f"chords: no note or chord in prompt {prompt!r}; prompts look like 'a C major chord, soft' "
                         "or 'a single E note, bright'")
    letter, accidental, quality = m.groups()
    root = OCTAVE_BASE + (PITCH_CLASS[letter] + {"#": 1, "b": -1, "": 0}[accidental]) % 12
    t = _TIMBRE_RE.search(prompt)
    return tuple(root + i for i in INTERVALS[quality]), (t.group(1).lower() if t else None)


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


# --------------------------------------------------------------------------- synthesis


ENVELOPES = {"soft": (0.03, 1.0), "bright": (0.005, 0.35)}  # (attack s, decay time constant s) per timbre


def note_wave(midi: int, timbre: str, *, sample_rate: int = SAMPLE_RATE, num_samples: int = NUM_SAMPLES,
              attack: float | None = None, decay: float | None = None, phases=None) -> torch.Tensor:
    """``[T]`` float64: one note (fundamental amplitude 1) in ``timbre`` with its envelope: a linear
    ``attack``, an exponential decay of time constant ``decay`` (defaults: :data:`ENVELOPES`), and a
    20 ms fade-out. ``phases``: starting phase of each partial (default 0, i.e. sine phase)."""
    if timbre not in TIMBRES:
        raise ValueError(f"timbre must be one of {TIMBRES}, got {timbre!r}")
    a0, d0 = ENVELOPES[timbre]
    attack, decay = attack or a0, decay or d0
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    f = midi_hz(midi)
    harmonics = [1] if timbre == "soft" else [n for n in range(1, 64, 2) if n * f < HARMONIC_LIMIT]
    wave = torch.zeros(num_samples, dtype=torch.float64)
    for i, n in enumerate(harmonics):
        phase = 0.0 if phases is None else float(phases[i % len(phases)])
        wave += torch.sin(2 * math.pi * n * f * t + phase) / n
    env = torch.clamp(t / attack, max=1.0) * torch.exp(-t / decay)
    fade = torch.clamp((t[-1] - t) / 0.02, max=1.0)
    return wave * env * fade


def synth_clip(notes, timbre: str, *, peak: float = 0.45, sample_rate: int = SAMPLE_RATE,
               num_samples: int = NUM_SAMPLES, attack: float | None = None, decay: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``[1, T]`` float32: a clean clip of the MIDI ``notes`` (equal amplitudes) in ``timbre``,
    peak-normalised to ``peak`` (see :func:`note_wave`). Partials start at phase 0 (as the base's
    corpus), or at random phases drawn from ``generator``."""
    wave = torch.zeros(num_samples, dtype=torch.float64)
    for m in notes:
        phases = None if generator is None else (2 * math.pi * torch.rand(32, generator=generator)).tolist()
        wave += note_wave(m, timbre, sample_rate=sample_rate, num_samples=num_samples, attack=attack, decay=decay,
                          phases=phases)
    return (peak * wave / wave.abs().max().clamp_min(1e-9)).float()[None]


def add_noise(x: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` plus white noise at ``snr_db`` (relative to the clip's mean power)."""
    noise = torch.randn(x.shape, generator=generator)
    scale = (x.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()
    return x + noise * scale / noise.pow(2).mean().sqrt()


def hard_clip(x: torch.Tensor, drive: float) -> torch.Tensor:
    """Overdrive: ``x`` scaled by ``drive`` and clipped at full scale (flat tops at ±1)."""
    return (x * drive).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------- reward


def to_mono(samples, sample_rate: int | None) -> torch.Tensor:
    """``[B, C, T]`` (or ``[B, T]``) audio at ``sample_rate`` (None: the world's) → ``[B, T]`` at 4 kHz, float32."""
    x = torch.as_tensor(samples).float().cpu()  # not detached: the ground truth is differentiable (guidance)
    if x.dim() == 2:
        x = x[:, None]
    if x.dim() != 3:
        raise ValueError(f"chords: expected audio [B, C, T] (or [B, T]), got {tuple(x.shape)}")
    x = x.mean(1)
    rate = sample_rate or SAMPLE_RATE
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        x = AF.resample(x, int(rate), SAMPLE_RATE)
    return x


def _band_energy(power: torch.Tensor, freqs: torch.Tensor, centers_hz: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: power within ±50 cents of each of ``centers_hz`` ``[K]`` (or ``[B, K]``)."""
    lo, hi = centers_hz * 2 ** (-1 / 24), centers_hz * 2 ** (1 / 24)
    if centers_hz.dim() == 1:
        mask = (freqs[None] >= lo[:, None]) & (freqs[None] < hi[:, None])  # [K, F]
        return power @ mask.T.to(power.dtype)
    mask = (freqs[None, None] >= lo[..., None]) & (freqs[None, None] < hi[..., None])  # [B, K, F]
    return torch.einsum("bf,bkf->bk", power, mask.to(power.dtype))


def analyse(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spectral statistics of mono 4 kHz audio ``[B, T]`` (see the module docstring)."""
    n = max(x.shape[1], NUM_SAMPLES)
    x64 = x.double()
    window = torch.hann_window(x.shape[1], periodic=False, dtype=torch.float64)
    spec = torch.fft.rfft(x64 * window, n=n)
    power = spec.real.pow(2) + spec.imag.pow(2)  # [B, F]
    freqs = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE).double()
    midi = torch.arange(BAND[0], BAND[1] + 1, dtype=torch.float64)
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    notes = _band_energy(power, freqs, f0)  # [B, 21]
    total = notes.sum(1)
    q = notes / total.clamp_min(1e-30)[:, None]
    harm = _band_energy(power, freqs, torch.cat([3 * f0, 5 * f0])).view(x.shape[0], 2, -1).sum(1)  # [B, 21]
    # notes present (≥ 10% of the band) from C3 up: below C3 a 3rd harmonic would land inside the band
    present = (q >= PRESENT_SHARE) & (midi >= OCTAVE_BASE)[None]
    ratio = (harm * present).sum(1) / (notes * present).sum(1).clamp_min(1e-30)
    bright = ((torch.log10(ratio.clamp_min(1e-12)) - BRIGHT_LOG_LO) / (BRIGHT_LOG_HI - BRIGHT_LOG_LO)).clamp(0, 1)
    keep = freqs >= 30.0  # DC and sub-audio drift are not noise
    p = power[:, keep] + 1e-20
    flatness = torch.exp(torch.log(p).mean(1)) / p.mean(1)
    span = math.log10(FLAT_BAD) - math.log10(FLAT_GOOD)
    no_noise = ((math.log10(FLAT_BAD) - torch.log10(flatness)) / span).clamp(0, 1)
    rms = x64.pow(2).mean(1).sqrt()
    clip_share = (x64.abs() >= CLIP_LEVEL).double().mean(1)
    no_clip = (1 - clip_share / CLIP_SHARE).clamp(0, 1)
    level = (rms / LEVEL_RMS).clamp(0, 1)
    audible = (total > 1e-8 * n) & (rms > 1e-4)
    return {"q": q, "midi": midi, "bright": torch.where(audible, bright, torch.zeros_like(bright)),
            "ratio": ratio, "flatness": flatness, "no_noise": no_noise, "no_clip": no_clip, "level": level,
            "rms": rms, "audible": audible}


def chord_scores(samples, prompts: list[str], sample_rate: int | None = None, *, stats: dict | None = None
                 ) -> torch.Tensor:
    """``[B, 3]`` (pitch, quality, timbre) of audio ``samples`` for ``prompts`` (see the module docstring)."""
    x = to_mono(samples, sample_rate)
    if len(prompts) != x.shape[0]:
        raise ValueError(f"gym_chords needs one prompt per sample: {x.shape[0]} samples, {len(prompts)} prompts")
    a = stats or analyse(x)
    rows = []
    for i, prompt in enumerate(prompts):
        notes, timbre = parse_prompt(prompt)
        q = a["q"][i][[int(m) - BAND[0] for m in notes]]  # shares of the prompted notes
        precision = q.sum()
        coverage = (q * len(notes) / COVER_SHARE).clamp(max=1).mean()
        pitch = precision * coverage if a["audible"][i] else torch.zeros((), dtype=torch.float64)
        quality = a["level"][i] * a["no_clip"][i] * a["no_noise"][i]
        b = a["bright"][i]
        if not a["audible"][i]:
            timbre_score = torch.zeros((), dtype=torch.float64)
        elif timbre is None:
            timbre_score = torch.ones((), dtype=torch.float64)
        else:
            timbre_score = b if timbre == "bright" else 1 - b
        rows.append(torch.stack([pitch, quality, timbre_score]))
    return torch.stack(rows).float().clamp(0, 1) if rows else torch.zeros(0, 3)


@registry.register("reward", "gym_chords")
class ChordsReward(Reward):
    """Ground truth of the chords gym world: pitch (prompted notes), quality (no clipping, noise or
    silence) and timbre (soft / bright), each in [0, 1]; audio at any ``sample_rate`` (resampled to 4 kHz)."""

    dims = ("pitch", "quality", "timbre")
    modality = "audio"
    # Gradients reach the waveform through the spectral shares (pitch), the flatness (quality's no-noise
    # term) and the harmonic ratio (timbre); the level and clipping terms are saturating / hard and give none.
    differentiable = True

    def forward(self, samples, prompts=None, *, sample_rate=None):
        if prompts is None or len(prompts) != len(samples):
            got = "none" if prompts is None else len(prompts)
            raise ValueError(f"gym_chords needs one prompt per sample (pitch reads the notes from it): "
                             f"{len(samples)} samples, {got} prompts")
        return chord_scores(samples, list(prompts), sample_rate)


def chord_features(samples, sample_rate: int | None = None) -> torch.Tensor:
    """``[B, 24]`` features for diversity (Vendi) and as a DRAGON embedder: 12-bin chroma of the
    fundamentals, brightness, no-noise, no-clip, level, and the 8-segment RMS envelope (peak 1)."""
    x = to_mono(samples, sample_rate).detach()
    a = analyse(x)
    pcs = (a["midi"].long() % 12)
    chroma = torch.zeros(x.shape[0], 12, dtype=torch.float64).index_add_(1, pcs, a["q"])
    segs = x[:, : x.shape[1] // 8 * 8].double().view(x.shape[0], 8, -1).pow(2).mean(-1).sqrt()
    env = segs / segs.amax(1, keepdim=True).clamp_min(1e-9)
    stats = torch.stack([a["bright"], a["no_noise"], a["no_clip"], a["level"]], 1)
    return torch.cat([chroma, stats, env], 1).float()


# --------------------------------------------------------------------------- world


@register_world
class Chords(World):
    """Short synthesised notes and chords: imperfect on pitch, quality and timbre."""

    name = "chords"
    modality = "audio"
    dims = ("pitch", "quality", "timbre")
    sample_rate = SAMPLE_RATE
    seconds = SECONDS
    # What the base was built for: the whole 0.512 s clip (its one latent frame), 10 steps of the stock
    # CosineDPMSolverMultistepScheduler (an SDE solver: as good as 20 here, 1.7x faster; its Brownian
    # noise per sample's generator is most of the sampling time), no classifier-free guidance (the base
    # saw 10% empty captions, so guidance_scale > 1 works and raises pitch by itself: 2.0 gives ≈ 0.92).
    sample_kwargs = {"audio_end_in_s": SECONDS, "num_inference_steps": 10, "guidance_scale": 1.0}

    @property
    def exemplar_dir(self):
        """Folder of 16 WAVs (4 kHz mono) of the target style for DRAGON's exemplar rewards."""
        return ASSETS / self.name / "exemplars"

    def prompts(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
        """Train: 6 templates × 42 contents (252 prompts); eval: 3 held-out templates × 42 (126).

        ``n=None``: every prompt of the split in a fixed order. Otherwise ``n`` prompts, seeded, with
        the 42 contents balanced (each run of 42 holds every content once) and each content's
        templates taken in turn.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"chords: split must be 'train' or 'eval', got {split!r}")
        templates = TRAIN_TEMPLATES if split == "train" else EVAL_TEMPLATES
        contents = all_contents()
        if n is None:
            return [chord_prompt(r, q, t, tpl) for tpl in templates for r, q, t in contents]
        rng = random.Random(f"chords-{split}-{seed}")
        queues: dict[int, list[str]] = {i: [] for i in range(len(contents))}
        out: list[str] = []
        while len(out) < n:
            for i in rng.sample(range(len(contents)), len(contents)):
                if not queues[i]:
                    queues[i] = rng.sample(templates, len(templates))
                out.append(chord_prompt(*contents[i], queues[i].pop()))
        return out[:n]

    def reward(self) -> ChordsReward:
        return ChordsReward()

    def features(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        return chord_features(samples, sample_rate)

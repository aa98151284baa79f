"""The "digits" image world: class-conditional handwritten digits from scikit-learn's ``load_digits``.

- **Base**: a tiny Stable Diffusion 3 pipeline (``assets/gym/digits/base``, loads with
  ``DiffusionPipeline.from_pretrained``) trained with flow matching on the 1,797 8×8 digits upsampled
  to 16×16 (white ink on black), with 25% of its captions' digits re-drawn at random: at the world's
  ``sample_kwargs`` it draws the prompted digit only about 65% of the time (TA 0.63-0.69 by seed, real
  digits 0.99), so there is something to align; with ``guidance_scale=2`` it reaches TA 0.975
  (``benchmarks/gym_reference.py``), so classifier-free guidance is a baseline to beat.
  Its T5 is silent (outputs zeros), so ``max_sequence_length`` only sets a number of zero context
  slots, which the base was trained to ignore; see ``examples/build_gym_digits.py`` and ``build.json``.
- **Prompts**: twelve caption templates × ten digits. The base saw all of them in pretraining;
  alignment data uses the eight *train* templates, evaluation the four held-out *eval* templates,
  so an aligned model is measured on phrasings its preference data never contained (the digits,
  only ten, are shared by both splits).
- **Reward** ``gym_digits`` with dims ``(TA, VQ)``:
  TA = the shipped classifier's probability of the digit named in the prompt;
  VQ = a stroke-quality proxy in [0, 1] from statistics of the real digits (:func:`vq_score`).
  Both are differentiable in the samples.
- **Features** for Vendi: the samples as 8×8 grayscale in [0, 1] (the data's native resolution),
  flattened to 64 numbers -- pixels, not the judge's features, so diversity does not share the
  reward's blind spots.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmalign import registry
from mmalign.gym.base import ASSETS, World, register_world
from mmalign.rewards.base import Reward

RESOLUTION = 16
# T5 slots in the context (the pipeline's ``max_sequence_length``). The base's T5 is silent (zeros) and
# the base was trained to ignore how many such slots there are; 8 is cheap and fits every template.
T5_LENGTH = 8
TRAIN_TEMPLATES = (
    "a handwritten {d}", "the digit {d}", "a handwritten digit {d}", "the number {d}, written by hand",
    "digit {d}", "a scanned handwritten {d}", "an image of the digit {d}", "a drawing of the number {d}",
)
EVAL_TEMPLATES = ("a hand-drawn {d}", "a picture of the number {d}", "handwriting: the digit {d}", "a sketch of a {d}")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# a standalone numeral (not part of "12" or "3.5"), or a number word
_DIGIT = re.compile(r"(?<!\w)(?<!\d\.)(\d)(?!\w)(?!\.\d)|\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def parse_digit(prompt: str) -> int:
    """The digit a prompt asks for: the last standalone numeral 0-9 or number word ("a handwritten 3" → 3).

    Raises ``ValueError`` when the prompt names none: scoring TA against a guessed digit would be silent nonsense.
    """
    found = _DIGIT.findall(prompt)
    if not found:
        raise ValueError(f"no digit 0-9 in prompt {prompt!r}; digits prompts look like 'a handwritten 3'")
    numeral, word = found[-1]
    return int(numeral) if numeral else NUMBER_WORDS.index(word.lower())


def load_real_digits(resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as ``[1797, 1, R, R]`` grayscale in [0, 1] (ink = 1) and ``[1797]`` labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.tensor(data.target, dtype=torch.long)


def to_gray(samples: torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
    """``[B, 3, H, W]`` (or ``[B, 1, H, W]``) in [-1, 1] → ``[B, 1, R, R]`` grayscale in [0, 1]."""
    if samples.dim() != 4 or samples.shape[1] not in (1, 3):
        raise ValueError(f"digits samples must be [B, 3, H, W] images in [-1, 1], got {tuple(samples.shape)}")
    gray = (samples.float().mean(1, keepdim=True) + 1) / 2
    if gray.shape[-2:] != (resolution, resolution):
        gray = F.interpolate(gray, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return gray.clamp(0, 1)


class DigitClassifier(nn.Module):
    """Small CNN on ``[B, 1, R, R]`` grayscale in [0, 1]: two conv stages, a hidden layer, ten logits."""

    def __init__(self, resolution: int = RESOLUTION, channels: tuple[int, int] = (16, 32), hidden: int = 64):
        super().__init__()
        c1, c2 = channels
        self.config = {"resolution": resolution, "channels": [c1, c2], "hidden": hidden}
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (resolution // 4) ** 2, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, 10)

    def features(self, gray: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` penultimate activations."""
        return self.body(gray * 2 - 1)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        """``[B, 10]`` logits."""
        return self.head(self.features(gray))


# --------------------------------------------------------------------------- visual-quality proxy

HIST_BINS = 8


def vq_features(gray: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stroke statistics of ``[B, 1, R, R]`` grayscale in [0, 1] (all differentiable).

    - ``hist [B, 8]``: soft intensity histogram (Gaussian bins, width 1/16): how much clean background,
      saturated ink and grey there is;
    - ``rough [B]``: mean |g − 3×3 box blur of g|, high-frequency speckle (cleanliness);
    - ``contrast [B]``: mean of the brightest 15% pixels minus mean of the darkest 50% (stroke contrast).
    """
    flat = gray.flatten(1)
    centers = (torch.arange(HIST_BINS, device=gray.device, dtype=gray.dtype) + 0.5) / HIST_BINS
    w = torch.exp(-0.5 * ((flat[..., None] - centers) * (2 * HIST_BINS)) ** 2)
    hist = (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).mean(1)
    blur = F.avg_pool2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    rough = (gray - blur).abs().flatten(1).mean(1)
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    contrast = ordered[:, -max(1, int(0.15 * n)):].mean(1) - ordered[:, : n // 2].mean(1)
    return {"hist": hist, "rough": rough, "contrast": contrast}


def vq_score(gray: torch.Tensor, stats: dict, tolerance: float = 1.0) -> torch.Tensor:
    """``[B]`` visual quality in [0, 1]: the geometric mean of three terms, each 1 at typical real-digit values.

    - histogram: ``1 − TV(hist, real mean hist)`` (too little or too much ink, grey background, washed-out strokes);
    - cleanliness: ``exp(−½ relu(|z| − tol)²)`` with ``z`` the roughness's z-score against real digits:
      speckle (rougher than real) and blur (smoother than real) both cost;
    - contrast: ``exp(−½ relu(−z − tol)²)`` with ``z`` the contrast's z-score (only flatter than real costs).

    The geometric mean lets one failure (noise, blur) sink the score. ``stats``: ``hist`` (8 numbers),
    ``rough_mean``, ``rough_std``, ``contrast_mean``, ``contrast_std``, as ``examples/build_gym_digits.py``
    writes them to ``vq_stats.json``.
    """
    f = vq_features(gray)
    ref = torch.as_tensor(stats["hist"], dtype=gray.dtype, device=gray.device)
    t_hist = (1 - 0.5 * (f["hist"] - ref).abs().sum(-1)).clamp_min(1e-6)
    z_rough = (f["rough"] - stats["rough_mean"]) / stats["rough_std"]
    z_contrast = (f["contrast"] - stats["contrast_mean"]) / stats["contrast_std"]
    t_clean = torch.exp(-0.5 * F.relu(z_rough.abs() - tolerance) ** 2)
    t_contrast = torch.exp(-0.5 * F.relu(-z_contrast - tolerance) ** 2)
    return (t_hist * t_clean * t_contrast).clamp_min(1e-12) ** (1 / 3)


def vq_statistics(gray: torch.Tensor) -> dict:
    """The reference statistics :func:`vq_score` needs, from real digits ``[N, 1, R, R]``."""
    f = vq_features(gray)
    return {"hist": f["hist"].mean(0).tolist(), "rough_mean": f["rough"].mean().item(),
            "rough_std": f["rough"].std().item(), "contrast_mean": f["contrast"].mean().item(),
            "contrast_std": f["contrast"].std().item()}


# --------------------------------------------------------------------------- reward and world


def _load_judge(root: str) -> tuple[DigitClassifier, dict]:
    from safetensors.torch import load_file

    root_path = Path(root)
    missing = [n for n in ("classifier.safetensors", "classifier.json", "vq_stats.json") if not (root_path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root_path}: missing {missing}; rebuild with `python examples/build_gym_digits.py`")
    cfg = json.loads((root_path / "classifier.json").read_text())
    model = DigitClassifier(cfg["resolution"], tuple(cfg["channels"]), cfg["hidden"])
    model.load_state_dict(load_file(str(root_path / "classifier.safetensors")))
    model.eval().requires_grad_(False)
    return model, json.loads((root_path / "vq_stats.json").read_text())


@registry.register("reward", "gym_digits")
class DigitsReward(Reward):
    """Ground truth of the digits gym world: TA (classifier prob. of the prompted digit), VQ (stroke quality)."""

    dims = ("TA", "VQ")
    modality = "image"
    differentiable = True

    def __init__(self, assets: str | None = None):
        """
        Args:
            assets: folder with ``classifier.safetensors``, ``classifier.json`` and ``vq_stats.json``;
                default: the shipped ``assets/gym/digits``.
        """
        self.classifier, self.stats = _load_judge(str(Path(assets) if assets else ASSETS / "digits"))
        self.resolution = self.classifier.config["resolution"]

    def forward(self, samples, prompts=None, *, sample_rate=None):
        if prompts is None or len(prompts) != len(samples):
            got = "none" if prompts is None else len(prompts)
            raise ValueError(f"gym_digits needs one prompt per sample (TA reads the digit from it): {len(samples)} samples, {got} prompts")
        gray = to_gray(torch.as_tensor(samples), self.resolution)
        device = next(self.classifier.parameters()).device
        gray = gray.to(device)
        digits = torch.tensor([parse_digit(p) for p in prompts], device=device)
        ta = self.classifier(gray).float().softmax(-1).gather(1, digits[:, None])[:, 0]
        return torch.stack([ta, vq_score(gray, self.stats)], dim=1)

    def predict(self, samples) -> torch.Tensor:
        """``[B, 10]`` class probabilities (which digit the judge sees), for inspection."""
        gray = to_gray(torch.as_tensor(samples), self.resolution).to(next(self.classifier.parameters()).device)
        return self.classifier(gray).softmax(-1)


@register_world
class Digits(World):
    name = "digits"
    modality = "image"
    dims = ("TA", "VQ")
    # What the base was built for: 16×16 pixels (8×8 latents), 20 Euler steps, no classifier-free
    # guidance (guidance_scale > 1 works -- the base saw 10% empty captions -- and raises TA by itself),
    # 8 T5 slots (the stock default 256 gives the same images, 5× slower).
    sample_kwargs = {"height": 16, "width": 16, "num_inference_steps": 20, "guidance_scale": 1.0,
                     "max_sequence_length": T5_LENGTH}

    def prompts(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[str]:
        """Train: 8 templates × 10 digits; eval: 4 held-out templates × 10 digits.

        ``n=None``: every prompt of the split, in a fixed order. Otherwise ``n`` prompts, seeded, with the
        digits balanced (each run of 10 holds every digit once) and each digit's templates taken in turn.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        templates = TRAIN_TEMPLATES if split == "train" else EVAL_TEMPLATES
        if n is None:
            return [t.format(d=d) for t in templates for d in range(10)]
        rng = random.Random(f"digits-{split}-{seed}")
        queues: dict[int, list[str]] = {d: [] for d in range(10)}
        out: list[str] = []
        while len(out) < n:
            for d in rng.sample(range(10), 10):
                if not queues[d]:
                    queues[d] = rng.sample(templates, len(templates))
                out.append(queues[d].pop().format(d=d))
        return out[:n]

    def reward(self) -> DigitsReward:
        return DigitsReward()

    def features(self, samples) -> torch.Tensor:
        """``[B, 64]``: grayscale in [0, 1] at 8×8 (area-averaged), flattened."""
        return F.adaptive_avg_pool2d(to_gray(torch.as_tensor(samples), RESOLUTION), 8).flatten(1)

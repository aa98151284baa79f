"""Evaluation of a fine-tuned generator against its base under a world's ground truth.

Both models sample every held-out prompt from the same seeds (shared initial noise), so each
(tuned, base) pair differs only by the fine-tuning. As ../shared/GYM-NOTES.md measured, a strict
win rate then rewards tiny consistent changes; we report together:

- ``win_rate_strict``: P(tuned > base) on the weighted ground truth, exact ties half;
- ``win_rate``: ties within ``tolerance`` count half (the pass/fail figure), with a 95% interval;
- ``nontie_win_share``: wins among the pairs that are not tied;
- mean ground-truth reward per dimension (base, tuned, change); and
- diversity: the mean per-prompt Vendi score of the samples' features (collapse shows here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mmalign.rewards.base import weighted_sum
from mmalign.rewards.vendi import vendi_score


def win_rate(tuned: torch.Tensor, base: torch.Tensor, tolerance: float = 0.0) -> dict[str, float]:
    """Win rate of ``tuned`` over ``base`` (``[N]`` paired scores) with ties (``|Δ| ≤ tolerance``,
    or exactly equal when 0) counted half, and a 95% normal-approximation interval.

    Example: Δ = (0.3, −0.01, 0.2, −0.4) with tolerance 0.05 → wins 2, ties 1, losses 1 →
    (2 + 0.5)/4 = 0.625.
    """
    delta = tuned.double() - base.double()
    tie = delta.abs() <= tolerance if tolerance > 0 else delta == 0
    wins, losses = ((delta > 0) & ~tie), ((delta < 0) & ~tie)
    per_pair = wins.double() + 0.5 * tie.double()
    n = delta.numel()
    mean = float(per_pair.mean())
    half = 1.96 * float(per_pair.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    decided = int(wins.sum() + losses.sum())
    return {"win_rate": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n,
            "wins": int(wins.sum()), "ties": int(tie.sum()), "losses": int(losses.sum()),
            "nontie_win_share": float(wins.sum()) / decided if decided else 0.5}


def mean_vendi(features: torch.Tensor, groups: list[int]) -> float:
    """Mean Vendi score (cosine kernel) over groups of consecutive rows (one group per prompt)."""
    scores, start = [], 0
    for size in groups:
        if size > 1:
            scores.append(float(vendi_score(features[start: start + size].double())))
        start += size
    return sum(scores) / len(scores) if scores else float("nan")


def compare(world, base_samples, tuned_samples, prompts: list[str], groups: list[int], *,
            tolerance: float, dim_weights: dict[str, float] | None = None, sample_rate: int | None = None,
            return_scores: bool = False):
    """All the figures of one base-vs-tuned comparison on the same prompts and seeds (and, with
    ``return_scores``, the ``[N]`` weighted ground truth of base and tuned samples as a second value)."""
    reward = world.reward()
    with torch.no_grad():
        r_base = reward(base_samples, prompts, sample_rate=sample_rate).float().cpu()
        r_tuned = reward(tuned_samples, prompts, sample_rate=sample_rate).float().cpu()
    dims = reward.dims
    total_base, total_tuned = weighted_sum(r_base, dims, dim_weights), weighted_sum(r_tuned, dims, dim_weights)
    result = {
        "world": world.name, "n_prompts": len(groups), "n_samples": int(r_base.shape[0]), "tolerance": tolerance,
        **{f"{k}": v for k, v in win_rate(total_tuned, total_base, tolerance).items()},
        "win_rate_strict": win_rate(total_tuned, total_base, 0.0)["win_rate"],
        "reward": {d: {"base": float(r_base[:, i].mean()), "tuned": float(r_tuned[:, i].mean()),
                       "change": float((r_tuned[:, i] - r_base[:, i]).mean())} for i, d in enumerate(dims)},
        "vendi": {"base": mean_vendi(world.features(base_samples).float().cpu(), groups),
                  "tuned": mean_vendi(world.features(tuned_samples).float().cpu(), groups)},
    }
    result["passed"] = result["ci_low"] > 0.5
    return (result, (total_base, total_tuned)) if return_scores else result


def evaluate_world(world, sampler_base, sampler_tuned, *, num_prompts: int, samples_per_prompt: int, seed: int,
                   tolerance: float, dim_weights=None, out_dir: str | Path | None = None, batch_size: int = 64) -> dict:
    """Sample held-out prompts with both models from shared seeds, compare, write ``eval.json``
    and a side-by-side figure to ``out_dir``."""
    prompts = world.prompts("eval", num_prompts, seed)
    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    seeds = [seed * 100_003 + i for i in range(len(flat))]
    base, tuned = sample_all(sampler_base, flat, seeds, batch_size), sample_all(sampler_tuned, flat, seeds, batch_size)
    result, totals = compare(world, base, tuned, flat, [samples_per_prompt] * len(prompts), tolerance=tolerance,
                             dim_weights=dim_weights, sample_rate=getattr(sampler_base, "sample_rate", None),
                             return_scores=True)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
        side_by_side(world.modality, base, tuned, flat, out_dir, per_prompt=samples_per_prompt, scores=totals)
    return result


def sample_all(sampler, prompts: list[str], seeds: list[int], batch_size: int):
    out = [sampler(prompts[i: i + batch_size], seeds[i: i + batch_size]) for i in range(0, len(prompts), batch_size)]
    return sum(out, []) if isinstance(out[0], list) else torch.cat(out)


def side_by_side(modality: str, base, tuned, prompts: list[str], out_dir: Path, *, per_prompt: int,
                 max_prompts: int = 8, scores: tuple[torch.Tensor, torch.Tensor] | None = None) -> Path:
    """``compare.png``: base (left) and tuned (right) for the first ``max_prompts`` prompts, one row
    per prompt. Images: every sample of the prompt side by side; video: the first sample's frames as a
    strip; audio: the first sample's spectrogram. With ``scores`` (the weighted ground truth per sample)
    each row is titled with its mean. Text: ``compare.md``, a table."""
    n_prompts = min(len(prompts) // per_prompt, max_prompts)
    if modality == "text":
        n = n_prompts * per_prompt
        lines = ["| prompt | base | tuned |", "|---|---|---|"]
        lines += [f"| {p} | {b} | {t} |".replace("\n", " ") for p, b, t in zip(prompts[:n], base[:n], tuned[:n])]
        path = out_dir / "compare.md"
        path.write_text("\n".join(lines) + "\n")
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def tile(samples, i: int):
        first = i * per_prompt
        if modality == "image":  # the prompt's samples in a row: [3, H, k*W]
            row = torch.cat([samples[first + j].float().cpu() for j in range(min(per_prompt, 8))], dim=2)
            return ((row.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
        x = samples[first].float().cpu()
        if modality == "video":  # frames side by side: [3, F, H, W] -> [H, F*W, 3]
            strip = x.permute(2, 1, 3, 0).reshape(x.shape[2], -1, 3)
            return ((strip + 1) / 2).clamp(0, 1).numpy()
        return x.mean(0).numpy()

    width = 4.0 if modality == "audio" else max(3.0, 0.45 * min(per_prompt, 8) * (1 if modality == "image" else 1.6))
    fig, axes = plt.subplots(n_prompts, 2, figsize=(2 * width + 1.2, 0.9 * n_prompts + 0.8), squeeze=False)
    for i in range(n_prompts):
        for j, (name, samples) in enumerate((("base", base), ("tuned", tuned))):
            ax = axes[i][j]
            if modality == "audio":
                ax.specgram(tile(samples, i), NFFT=64, noverlap=48)
            else:
                ax.imshow(tile(samples, i), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = name if i == 0 else ""
            if scores is not None:
                mean = float(scores[j][i * per_prompt:(i + 1) * per_prompt].mean())
                title = f"{title + ': ' if title else ''}reward {mean:.2f}"
            ax.set_title(title, fontsize=7, pad=2)
            if j == 0:
                ax.set_ylabel(prompts[i * per_prompt][:30], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    path = out_dir / "compare.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

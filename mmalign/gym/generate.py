"""Preference data from any model and any reward: sample candidates, label pairs, write JSONL + media.

In the gym the reward is a world's ground truth and the annotator simulates noisy raters; with a
real model and a real reward model the same function bootstraps AI-feedback data. The output is
the standard pair format (``pairs.jsonl`` with media paths relative to it, per-dimension labels,
ties, and noisy per-dimension ratings as ``reward_chosen``/``reward_rejected`` for RWR).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmalign.gym.annotator import Annotator
from mmalign.registry import register

VERDICT = {1: "chosen", -1: "rejected", 0: "tie"}


def write_sample(sample, modality: str, path_stem: Path, sample_rate: int | None = None) -> str:
    """Write one sample losslessly enough to train on; returns the file (or folder) name."""
    from mmalign.data import media

    if modality == "audio":
        if sample_rate is None:
            raise ValueError("write_sample: audio needs the sample rate")
        return media.save_audio(sample, path_stem.with_suffix(".wav"), sample_rate, subtype="FLOAT").name

    if modality == "image":
        return media.save_image_grid(sample[None], path_stem.with_suffix(".png"), nrow=1, padding=0).name
    if modality == "video":  # a folder of PNG frames: lossless, read back by load_video
        path_stem.mkdir(parents=True, exist_ok=True)
        for f in range(sample.shape[1]):
            media.save_image_grid(sample[:, f][None], path_stem / f"{f:04d}.png", nrow=1, padding=0)
        return path_stem.name
    raise ValueError(f"write_sample: unsupported modality {modality!r}")


def generate_pairs(sampler, reward, prompts: list[str], out_dir: str | Path, *, modality: str,
                   candidates: int = 4, pairs_per_prompt: int | None = None, annotator: Annotator | None = None,
                   seed: int = 0, batch_size: int = 64, sample_rate: int | None = None, progress: bool = True) -> Path:
    """Sample ``candidates`` items per prompt, score them with ``reward``, label pairs of them with
    ``annotator`` and write ``out_dir/pairs.jsonl`` (+ media). Text samples are written inline.

    ``pairs_per_prompt`` pairs are drawn at random among the ``candidates·(candidates−1)/2``
    possible ones (all of them when ``None``). Ties are written with ``tie: true``.
    """
    annotator = annotator or Annotator()
    out_dir = Path(out_dir)
    media_dir = out_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    dims = reward.dims
    for start in tqdm(range(0, len(prompts), max(1, batch_size // candidates)), desc="generate", disable=not progress):
        chunk = prompts[start: start + max(1, batch_size // candidates)]
        flat = [p for p in chunk for _ in range(candidates)]
        seeds = [seed * 1_000_003 + (start * candidates) + i for i in range(len(flat))]
        samples = sampler(flat, seeds)
        with torch.no_grad():
            scores = reward(samples, flat, sample_rate=sample_rate).float().cpu()
        ratings = annotator.rate(scores, dims, gen)
        names = []
        for i, s in enumerate(samples):
            if modality == "text":
                names.append(s)
            else:
                names.append(write_sample(s, modality, media_dir / f"{start * candidates + i:06d}", sample_rate))
        for j, prompt in enumerate(chunk):
            idx = list(range(j * candidates, (j + 1) * candidates))
            pairs = list(itertools.combinations(idx, 2))
            if pairs_per_prompt is not None and pairs_per_prompt < len(pairs):
                pairs = rng.sample(pairs, pairs_per_prompt)
            if not pairs:
                continue
            a = torch.tensor([p[0] for p in pairs])
            b = torch.tensor([p[1] for p in pairs])
            overall, per_dim = annotator.label(scores[a], scores[b], dims, gen)
            for k, (ia, ib) in enumerate(pairs):
                flip = overall[k] == -1  # write the preferred item as "chosen"
                first, second = (ib, ia) if flip else (ia, ib)
                labels = {d: VERDICT[int(-v if flip else v)] for d, v in zip(dims, per_dim[k].tolist())}
                item = lambda i: names[i] if modality == "text" else f"media/{names[i]}"
                rows.append({"prompt": prompt, "chosen": item(first), "rejected": item(second),
                             "tie": bool(overall[k] == 0), "labels": labels,
                             "reward_chosen": dict(zip(dims, ratings[first].tolist())),
                             "reward_rejected": dict(zip(dims, ratings[second].tolist()))})
    path = out_dir / "pairs.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generated_data(world_name: str | None, run, *, num_prompts: int, candidates: int, pairs_per_prompt: int | None,
                   annotator: Annotator, seed: int, out_dir: str | None, batch_size: int,
                   prompts_file: str | None = None, progress: bool = True) -> Path:
    """Generate (or reuse, when the same settings already produced it) the pairs of a run's base model."""
    from mmalign import registry
    from mmalign.gym.base import get_world
    from mmalign.recipes.sample import SAMPLER_KEYS, make_sampler

    world = get_world(world_name) if world_name else None
    if world is None and run.reward is None:
        raise ValueError("generated_pairs: set data.world, or give the run a reward section to label with")
    out = Path(out_dir or Path(run.output_dir) / "generated")
    base = {k: run.adapter.get(k) for k in SAMPLER_KEYS}  # LoRA/training settings do not change base samples
    tag = fingerprint(world=world_name, prompts=prompts_file, adapter=base, reward=run.reward, n=num_prompts, k=candidates,
                      p=pairs_per_prompt, annotator=asdict(annotator), seed=seed)
    marker = out / "fingerprint.txt"
    if (out / "pairs.jsonl").is_file() and marker.is_file() and marker.read_text() == tag:
        return out / "pairs.jsonl"
    reward = world.reward() if world else registry.build("reward", run.reward)
    modality = world.modality if world else reward.modality
    if world is not None:
        prompts = world.prompts("train", num_prompts, seed)
    elif prompts_file is not None:
        prompts = [line.strip() for line in Path(prompts_file).read_text().splitlines() if line.strip()][:num_prompts]
    else:
        raise ValueError("generated_pairs without a world needs prompts: set data.prompts_file")
    sampler = make_sampler(run.adapter, None, world.sample_kwargs if world else {})
    path = generate_pairs(sampler, reward, prompts, out, modality=modality, candidates=candidates,
                          pairs_per_prompt=pairs_per_prompt, annotator=annotator, seed=seed, batch_size=batch_size,
                          sample_rate=getattr(sampler, "sample_rate", None), progress=progress)
    marker.write_text(tag)
    return path


@register("data", "generated_pairs", runtime_args=("seed", "run"))
def generated_pairs(
    world: str | None = None,
    prompts_file: str | None = None,
    num_prompts: int = 64,
    candidates: int = 4,
    pairs_per_prompt: int | None = None,
    temperature: float = 0.05,
    tie_threshold: float = 0.02,
    dim_weights: dict[str, float] | None = None,
    eval_fraction: float = 0.1,
    out_dir: str | None = None,
    batch_size: int = 64,
    data_seed: int | None = None,
    seed: int = 0,
    run=None,
):
    """Pairs sampled from the run's base model and labelled by a simulated annotator (gym world or any reward).

    Args:
        world: a gym world (its training prompts and ground truth); or null to use the run's
            ``reward`` section and ``prompts_file``.
        prompts_file: one prompt per line (without a world).
        num_prompts: prompts to sample.
        candidates: samples per prompt.
        pairs_per_prompt: pairs labelled per prompt (default: all candidate pairs).
        temperature, tie_threshold, dim_weights: the annotator (Bradley–Terry noise, ties, weights).
        eval_fraction: share of pairs held out for evaluation.
        out_dir: where pairs and media go (default OUTPUT_DIR/generated); reused when the settings match.
        batch_size: samples per sampling call.
        data_seed: seed of the sampling, labelling and split (default: the run's seed); fix it to
            train several seeds on the same data.
        seed, run: from the run.
    """
    from mmalign.data.pairs import preference_pairs

    if run is None:
        raise ValueError("generated_pairs is built by a recipe (it samples the run's model)")
    annotator = Annotator(temperature=temperature, tie_threshold=tie_threshold, dim_weights=dim_weights)
    seed = seed if data_seed is None else data_seed
    path = generated_data(world, run, num_prompts=num_prompts, candidates=candidates, pairs_per_prompt=pairs_per_prompt,
                          annotator=annotator, seed=seed, out_dir=out_dir, batch_size=batch_size,
                          prompts_file=prompts_file, progress=getattr(run.train, "progress", True))
    return preference_pairs(str(path), eval_fraction=eval_fraction, seed=seed)

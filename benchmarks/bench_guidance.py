"""Reward guidance vs best-of-N at equal compute on a gym world's ground truth (issue 6).

1. Train the noisy-latent reward model (recipe ``latent_reward_model``) on pairs generated from the
   world's base and labelled by the simulated annotator: ``mmalign train CONFIG`` (skipped with ``--rm``).
2. On held-out eval prompts (``world.prompts("eval")``, ``--samples-per-prompt`` seeds each), sample:
   - ``base``: the stock pipeline;
   - ``guided``: the same seeds with ṽ = v − λ·c(t)·∇(w·r_φ) at every step (``--scale``, ``--weights``;
     c = t/(1−t) for the flow worlds, tan θ = σ for the audio world ``chords``, Stable Audio);
   - ``best-of-N``: N candidates per sample (candidate 0 = the base sample), the best under the *same*
     latent reward model at t = 0, for N = 2, 4 and the compute-matched N = ⌈guided/base wall time⌉;
   - ``oracle``: decoded-space guidance with the ground truth itself (not a fair comparison; it shows
     the decoded path works and bounds what a perfect reward model could give).
3. Report mean ground truth per dimension, win rate vs base (``mmalign.gym.evaluate.compare``: ties
   within ``--tolerance`` count half, 95% interval) and the wall-time ratio of each to base.

    python benchmarks/bench_guidance.py                       # digits: trains the RM (~2 min), then ~1 min
    python benchmarks/bench_guidance.py --rm outputs/digits_nrg/final --scale 1 --weights TA=1,VQ=0.5 --sweep
    python benchmarks/bench_guidance.py --world moving_digits --config configs/gym/moving_digits_nrg.yaml
    python benchmarks/bench_guidance.py --world chords --num-prompts 42 --samples-per-prompt 4   # audio (Stable Audio)

Single thread (``--threads``); times are medians of ``--repeats`` runs of each method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="digits")
    ap.add_argument("--config", default=None, help="latent_reward_model config (default configs/gym/<world>_nrg.yaml)")
    ap.add_argument("--rm", default=None, help="a trained latent reward model (skip training)")
    ap.add_argument("--output-dir", default="outputs/bench_guidance")
    ap.add_argument("--num-prompts", type=int, default=40)
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--weights", default=None, help="per-dimension guidance weights, e.g. TA=1,VQ=0.5 "
                    "(default: TA=1,VQ=0.5 for digits, else 1 for every dimension of the world)")
    ap.add_argument("--t-max", type=float, default=1.0)
    ap.add_argument("--max-coef", type=float, default=10.0)
    ap.add_argument("--oracle-scale", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="also: other weights, λ values and t_max (same reward model)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)

    import torch

    torch.set_num_threads(args.threads)
    from mmalign.config import load_config, validate_guidance
    from mmalign.gym.base import get_world
    from mmalign.gym.evaluate import compare, sample_all
    from mmalign.guidance.sampler import compute_matched_n
    from mmalign.recipes.sample import make_sampler

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = args.config or f"configs/gym/{args.world}_nrg.yaml"
    rm = args.rm
    train_seconds = None
    if rm is None:
        from mmalign.cli import main as cli

        run_dir = out / "rm"
        t0 = time.perf_counter()
        if cli(["train", config, f"output_dir={run_dir}", "train.progress=false"]) != 0:
            return 1
        train_seconds = time.perf_counter() - t0
        rm = str(run_dir / "final")
    rm_accuracy = json.loads((Path(rm) / "accuracy_by_t.json").read_text()) if (Path(rm) / "accuracy_by_t.json").is_file() else {}
    cfg = load_config(config)
    world = get_world(args.world)
    if args.weights is None:
        args.weights = "TA=1,VQ=0.5" if args.world == "digits" else ",".join(f"{d}=1" for d in world.dims)
    weights = {k: float(v) for k, v in (kv.split("=") for kv in args.weights.split(","))}
    prompts = world.prompts("eval", args.num_prompts, args.seed)
    flat = [p for p in prompts for _ in range(args.samples_per_prompt)]
    seeds = [args.seed * 100_003 + i for i in range(len(flat))]
    adapter = {"name": "diffusion", "pretrained": cfg.adapter["pretrained"]}
    if cfg.adapter.get("family"):
        adapter["family"] = cfg.adapter["family"]

    def guidance(**kw):
        base = {"reward_model": rm, "weights": weights, "scale": args.scale, "t_max": args.t_max,
                "max_coef": args.max_coef}
        return validate_guidance({**base, **kw})

    sample_rate = None

    def run(g):
        nonlocal sample_rate
        sampler = make_sampler(adapter, None, world.sample_kwargs, device="cpu", guidance=g)
        sample_rate = getattr(sampler, "sample_rate", None)
        sample_all(sampler, flat[:2], seeds[:2], 64)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            samples = sample_all(sampler, flat, seeds, 64)
            times.append(time.perf_counter() - t0)
        return samples, statistics.median(times)

    results = {}
    base, t_base = run(None)
    print(f"base: {t_base:.2f} s for {len(flat)} samples")
    guided, t_guided = run(guidance())
    ratio = t_guided / t_base
    n_matched = compute_matched_n(t_guided, t_base)
    methods = {"guided": (guided, t_guided)}
    for n in sorted({2, 4, n_matched}):
        methods[f"best-of-{n}"] = run(guidance(scale=0.0, best_of_n=n))
    methods["oracle (decoded GT)"] = run(validate_guidance({"decoded_reward": {"name": f"gym_{args.world}"},
                                                            "weights": weights, "scale": args.oracle_scale,
                                                            "t_max": args.t_max, "max_coef": args.max_coef}))
    groups = [args.samples_per_prompt] * len(prompts)
    rows = []
    for name, (samples, seconds) in methods.items():
        r = compare(world, base, samples, flat, groups, tolerance=args.tolerance, sample_rate=sample_rate)
        results[name] = {**r, "seconds": seconds, "cost_ratio": seconds / t_base}
        rows.append((name, r, seconds / t_base))
    dims = list(results["guided"]["reward"])
    print(f"\n{args.world}: {len(prompts)} held-out prompts x {args.samples_per_prompt} seeds; guidance λ={args.scale}, "
          f"weights {weights}; guided/base wall time {ratio:.2f}x -> compute-matched best-of-{n_matched}")
    header = "| method | cost vs base | " + " | ".join(f"{d} (base → method)" for d in dims) + " | win rate vs base [95% CI] |"
    lines = [header, "|" + "---|" * (3 + len(dims))]
    for name, r, cost in rows:
        cells = " | ".join(f"{r['reward'][d]['base']:.3f} → {r['reward'][d]['tuned']:.3f}" for d in dims)
        lines.append(f"| {name} | {cost:.2f}x | {cells} | {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |")
    table = "\n".join(lines)
    print(table)
    g, b = results["guided"], results[f"best-of-{n_matched}"]
    total = lambda r: sum(r["reward"][d]["tuned"] for d in dims)  # noqa: E731
    print(f"\nguided vs compute-matched best-of-{n_matched}: sum of GT means {total(g):.3f} vs {total(b):.3f} "
          f"({total(g) - total(b):+.3f}); win rate vs base {g['win_rate']:.3f} vs {b['win_rate']:.3f}")
    sweep = {}
    if args.sweep:
        dims_rm = list(weights)
        variants = [{"weights": {d: float(d == k) for d in dims_rm}} for k in dims_rm]
        variants += [{"scale": s} for s in (0.3, 3.0, 10.0)] + [{"t_max": 0.5}]
        print("\nsweep (mean ground truth per dimension, cost vs base):")
        for kw in variants:
            samples, seconds = run(guidance(**kw))
            r = compare(world, base, samples, flat, groups, tolerance=args.tolerance, sample_rate=sample_rate)
            sweep[json.dumps(kw)] = {"reward": {d: r["reward"][d]["tuned"] for d in dims}, "cost_ratio": seconds / t_base}
            print(f"  {json.dumps(kw)}: " + ", ".join(f"{d} {r['reward'][d]['tuned']:.3f}" for d in dims)
                  + f"  ({seconds / t_base:.2f}x)")
    summary = {"world": args.world, "rm": rm, "rm_train_seconds": train_seconds, "rm_accuracy_by_t": rm_accuracy,
               "cost_ratio_guided": ratio, "compute_matched_n": n_matched, "args": vars(args),
               "results": {k: {kk: v[kk] for kk in ("reward", "win_rate", "ci_low", "ci_high", "win_rate_strict",
                                                     "vendi", "seconds", "cost_ratio")} for k, v in results.items()},
               "table": table, "sweep": sweep}
    (out / f"{args.world}.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / (args.world + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

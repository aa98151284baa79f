"""DRAGON / online iterative DPO on the alignment gym, against the base and against offline DPO.

    python benchmarks/bench_dragon.py                 # arith (DRAGON vs one round of offline DPO) and chords, 3 seeds
    python benchmarks/bench_dragon.py --only chords --seeds 0

- **arith** (text): ``configs/gym/arith_dragon.yaml`` (online iterative DPO, ground-truth reward, best-vs-worst
  couples) and ``configs/gym/arith_dpo.yaml`` (one round of offline DPO on annotator-labelled base samples),
  each judged by the gym's win rate against the base on the 40 held-out prompts (ties within 0.05 count half).
- **chords** (audio): ``configs/gym/chords_dragon.yaml`` (exemplar reward, no ground truth in training).
  Judged on the held-out caption templates of the exemplar style (soft major chords, 21 prompts x 4 clips,
  shared seeds): set FAD of the clips' features to the 16 exemplars (base vs tuned) and the gym win rate.

Every run is a fresh single-thread process (``mmalign train``); results go to ``outputs/bench_dragon``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def train(config: str, out: Path, seed: int, *extra: str) -> None:
    if (out / "final").is_dir():
        return  # reuse a finished run
    cmd = [sys.executable, "-m", "mmalign.cli", "train", config, f"output_dir={out}", f"seed={seed}",
           "train.progress=false", *extra]
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)


def chords_eval(out: Path, config: str) -> dict:
    """FAD to the exemplars and win rate vs base on the held-out soft-major-chord prompts."""
    import torch

    torch.set_num_threads(1)
    from mmalign.config import load_config
    from mmalign.gym.base import get_world
    from mmalign.gym.evaluate import compare, sample_all
    from mmalign.recipes.sample import make_sampler
    from mmalign.rewards.exemplar import exemplar_embeddings
    from mmalign.rewards.embedders import build_embedder
    from mmalign.rewards.frechet import frechet_distance

    cfg = load_config(ROOT / config)
    world = get_world("chords")
    prompts = [p for p in world.prompts("eval") if "major chord" in p and "soft" in p]
    flat = [p for p in prompts for _ in range(4)]
    seeds = [1234 * 100_003 + i for i in range(len(flat))]
    base = make_sampler(cfg.adapter, None, world.sample_kwargs, device="cpu")
    tuned = make_sampler(cfg.adapter, out / "final", world.sample_kwargs, device="cpu")
    xb, xt = sample_all(base, flat, seeds, 64), sample_all(tuned, flat, seeds, 64)
    res = compare(world, xb, xt, flat, [4] * len(prompts), tolerance=0.05, sample_rate=base.sample_rate)
    emb = build_embedder(cfg.reward["embedder"])
    ex = exemplar_embeddings(emb, ROOT / cfg.reward["exemplars"], None, sample_rate=base.sample_rate).double()
    fad = {name: float(frechet_distance(emb.embed(x, sample_rate=base.sample_rate).double(), ex)) for name, x in
           (("base", xb), ("tuned", xt))}
    return {**res, "fad_exemplars": fad}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", choices=["arith", "chords"], default=None)
    ap.add_argument("--out", default="outputs/bench_dragon")
    args = ap.parse_args()
    root = ROOT / args.out
    rows = []
    if args.only in (None, "arith"):
        for name, config in (("arith DRAGON (online DPO)", "configs/gym/arith_dragon.yaml"),
                             ("arith offline DPO, 1 round", "configs/gym/arith_dpo.yaml")):
            for seed in args.seeds:
                out = root / f"{Path(config).stem}_s{seed}"
                extra = ("data.out_dir=" + str(root / f"arith_dpo_data_s{seed}"),) if "dpo.yaml" in config else ()
                train(config, out, seed, *extra)
                ev = json.loads((out / "eval" / "eval.json").read_text())
                rows.append({"run": name, "seed": seed, "win_rate": ev["win_rate"], "ci_low": ev["ci_low"],
                             **{d: v["tuned"] - v["base"] for d, v in ev["reward"].items()},
                             "vendi": f"{ev['vendi']['base']:.2f}->{ev['vendi']['tuned']:.2f}"})
                print(json.dumps(rows[-1]))
    if args.only in (None, "chords"):
        config = "configs/gym/chords_dragon.yaml"
        for seed in args.seeds:
            out = root / f"chords_dragon_s{seed}"
            train(config, out, seed)
            ev = chords_eval(out, config)
            (out / "bench_eval.json").write_text(json.dumps(ev, indent=2))
            rows.append({"run": "chords DRAGON (exemplar reward)", "seed": seed, "win_rate": ev["win_rate"],
                         "ci_low": ev["ci_low"], **{d: v["change"] for d, v in ev["reward"].items()},
                         "fad": f"{ev['fad_exemplars']['base']:.3f}->{ev['fad_exemplars']['tuned']:.3f}",
                         "vendi": f"{ev['vendi']['base']:.2f}->{ev['vendi']['tuned']:.2f}"})
            print(json.dumps(rows[-1]))
    print("\n| run | seed | win rate vs base [95% low] | Δ reward per dim | FAD to exemplars | Vendi |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        dims = ", ".join(f"{k} {v:+.3f}" for k, v in r.items() if k not in ("run", "seed", "win_rate", "ci_low", "fad", "vendi"))
        print(f"| {r['run']} | {r['seed']} | {r['win_rate']:.3f} [{r['ci_low']:.3f}] | {dims} | {r.get('fad', '-')} | {r['vendi']} |")
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

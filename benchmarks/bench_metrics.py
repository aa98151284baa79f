"""Fréchet distance and Vendi score: mmalign (torch) against the usual numpy/scipy computation.

Fréchet distance, for each ``N`` in ``--sizes`` (two feature sets ``[N, d]``, ``d = --dim``):

- scipy, the pytorch-fid / fadtk way: ``np.cov`` of each set, then ``calc_frechet_distance``
  (``scipy.linalg.sqrtm(Σ₁Σ₂)``, eps retry if not finite, real part, trace). One run is timed in its
  two phases, "stats" (means and covariances) and "distance" (from the statistics).
- mmalign: ``frechet_distance(feats_a, feats_b)`` (one call, from features; for ``N < d`` it never
  forms a d×d square root), and ``frechet_distance_from_stats`` on the same covariances (the
  distance phase alone, as when reference statistics are precomputed).

Vendi score, for each ``N`` in ``--vendi-sizes`` (features ``[N, --vendi-dim]``), cosine and rbf
kernels: mmalign's ``vendi_score`` against the Vendi package's computation (normalise, ``K = X Xᵀ``
or the rbf matrix from ``scipy.spatial.distance.cdist`` with the median-distance bandwidth,
``scipy.linalg.eigvalsh(K / n)``, entropy).

Both sides get the same float64 data, the same thread count (``--threads``: OMP/MKL/OpenBLAS
variables set before numpy/torch load, ``threadpoolctl`` limits, ``torch.set_num_threads``), and
alternate which goes first in each of ``--repeats`` rounds; medians are reported, with the
agreement of the values and the share of the machine's CPU that other processes used during each
case (all its rounds; 50% on a 2-core machine = one core busy).
CPU only unless ``--device cuda`` (then mmalign runs on the GPU and is synchronised).

    python benchmarks/bench_metrics.py                       # defaults: 7-8 min on a shared 2-core CPU
    python benchmarks/bench_metrics.py --sizes 1000 --repeats 1 --vendi-sizes 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2048, help="feature size for the Fréchet distance")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000], help="rows per set")
    p.add_argument("--vendi-dim", type=int, default=512)
    p.add_argument("--vendi-sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per case (median reported)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads, both sides")
    p.add_argument("--device", default="cpu", help="mmalign's device (cpu or cuda)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.spatial.distance  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmalign.rewards.frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats  # noqa: E402
from mmalign.rewards.vendi import vendi_score  # noqa: E402


def cpu_sample() -> tuple[float, int, int]:
    """(wall time, busy jiffies of the whole machine, jiffies of this process)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return time.perf_counter(), sum(f[:8]) - f[3] - f[4], int(own[11]) + int(own[12])


def others_load(a, b) -> float:
    capacity = (b[0] - a[0]) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / capacity) if capacity > 0 else 0.0


def timed(fn):
    """(result, seconds) of one call; CUDA is synchronised around it."""
    sync = torch.cuda.synchronize if ARGS.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


# ---- the reference computations ---------------------------------------------------------------


def scipy_frechet_from_stats(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid / fadtk ``calc_frechet_distance`` (``sqrtm`` without its deprecated ``disp``)."""
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def scipy_vendi(x, kernel, bandwidth):
    n = x.shape[0]
    if kernel == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        K = x @ x.T
    else:
        K = np.exp(-scipy.spatial.distance.cdist(x, x, "sqeuclidean") / (2 * bandwidth**2))
    w = scipy.linalg.eigvalsh(K / n)
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


# ---- data ---------------------------------------------------------------------------------------


def features(n, d, rank, shift, rng):
    """Embedding-like rows: a rank-``rank`` signal with a decaying spectrum plus small isotropic noise."""
    basis = np.random.default_rng(ARGS.seed).standard_normal((rank, d)) / np.sqrt(rank)
    scale = 1.0 / np.sqrt(1.0 + np.arange(rank))
    return (rng.standard_normal((n, rank)) * scale) @ basis + 0.05 * rng.standard_normal((n, d)) + shift


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_frechet(rows):
    dev = ARGS.device
    rng = np.random.default_rng(ARGS.seed)
    for n in ARGS.sizes:
        a = features(n, ARGS.dim, 256, 0.0, rng)
        b = features(n, ARGS.dim, 256, 0.02, rng)
        ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
        frechet_distance(ta[:64], tb[:64])  # first-call overheads out of the timings
        t, vals, case_start = {k: [] for k in ("sp_stats", "sp_dist", "mm_feats", "mm_stats")}, {}, cpu_sample()
        for r in range(ARGS.repeats):
            for side in (("scipy", "mmalign") if r % 2 == 0 else ("mmalign", "scipy")):
                if side == "scipy":
                    stats, s1 = timed(lambda: (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
                    vals["scipy"], s2 = timed(lambda: scipy_frechet_from_stats(*stats))
                    t["sp_stats"].append(s1), t["sp_dist"].append(s2)
                    del stats
                else:
                    out, s1 = timed(lambda: frechet_distance(ta, tb))
                    vals["mmalign"] = out.item()
                    mstats = [x for f in (ta, tb) for x in gaussian_stats(f)]
                    out2, s2 = timed(lambda: frechet_distance_from_stats(*mstats))
                    vals["mmalign_stats"] = out2.item()
                    t["mm_feats"].append(s1), t["mm_stats"].append(s2)
                    del mstats
        sp_total = [x + y for x, y in zip(t["sp_stats"], t["sp_dist"])]
        row = dict(n=n, scipy_total=median(sp_total), scipy_stats=median(t["sp_stats"]),
                   scipy_dist=median(t["sp_dist"]), mm_feats=median(t["mm_feats"]), mm_dist=median(t["mm_stats"]),
                   fd_scipy=vals["scipy"], fd_mm=vals["mmalign"], fd_mm_stats=vals["mmalign_stats"],
                   others=others_load(case_start, cpu_sample()))
        rows.append(row)
        print(f"  N={n}: scipy {row['scipy_total']:.2f} s, mmalign {row['mm_feats']:.2f} s, FD {row['fd_mm']:.6f}",
              flush=True)


def bench_vendi(rows):
    rng = np.random.default_rng(ARGS.seed + 1)
    for n in ARGS.vendi_sizes:
        x = features(n, ARGS.vendi_dim, 64, 0.5, rng)
        tx = torch.from_numpy(x).to(ARGS.device)
        bw = float(np.median(scipy.spatial.distance.pdist(x[:256])))  # median heuristic, same for both
        for kernel in ("cosine", "rbf"):
            kw = {"kernel": kernel} if kernel == "cosine" else {"kernel": "rbf", "bandwidth": bw}
            vendi_score(tx[:32], **kw)
            ts, tm, case_start = [], [], cpu_sample()
            for r in range(ARGS.repeats):
                for side in (("scipy", "mmalign") if r % 2 == 0 else ("mmalign", "scipy")):
                    if side == "scipy":
                        v_sp, s = timed(lambda: scipy_vendi(x, kernel, bw))
                        ts.append(s)
                    else:
                        v_mm, s = timed(lambda: vendi_score(tx, **kw).item())
                        tm.append(s)
            rows.append(dict(n=n, kernel=kernel, scipy=median(ts), mm=median(tm), v_scipy=v_sp, v_mm=v_mm,
                             others=others_load(case_start, cpu_sample())))
            print(f"  N={n} {kernel}: scipy {median(ts):.3f} s, mmalign {median(tm):.3f} s, VS {v_mm:.4f}", flush=True)


def main():
    torch.set_num_threads(ARGS.threads)
    blas = sorted({f"{i['internal_api']} {i.get('version')} ({i['num_threads']} thr)" for i in threadpool_info()})
    print(f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}; device {ARGS.device}; "
          f"threads {ARGS.threads} (torch {torch.get_num_threads()}); {os.cpu_count()} CPUs")
    print("thread pools:", "; ".join(blas))
    fr, vs = [], []
    with threadpool_limits(limits=ARGS.threads):
        print(f"Fréchet distance, d = {ARGS.dim}, {ARGS.repeats} rounds")
        bench_frechet(fr)
        print(f"Vendi score, d = {ARGS.vendi_dim}, {ARGS.repeats} rounds")
        bench_vendi(vs)

    print(f"\nFréchet distance, d = {ARGS.dim}: median seconds ({ARGS.repeats} rounds)\n")
    print("| N | scipy: stats | scipy: sqrtm distance | scipy total | mmalign `frechet_distance` | total ratio "
          "(scipy/mmalign) | mmalign `from_stats` | distance ratio | FD (scipy) | abs diff | rel diff | others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in fr:
        diff = abs(r["fd_mm"] - r["fd_scipy"])
        print(f"| {r['n']} | {r['scipy_stats']:.2f} | {r['scipy_dist']:.2f} | {r['scipy_total']:.2f} | "
              f"{r['mm_feats']:.2f} | {r['scipy_total'] / r['mm_feats']:.1f}x | {r['mm_dist']:.2f} | "
              f"{r['scipy_dist'] / r['mm_dist']:.1f}x | {r['fd_scipy']:.6f} | {diff:.1e} | "
              f"{diff / abs(r['fd_scipy']):.1e} | {r['others']:.0%} |")
    print("\n(abs/rel diff: mmalign from features vs scipy; mmalign from stats vs scipy: "
          + ", ".join(f"{abs(r['fd_mm_stats'] - r['fd_scipy']):.1e}" for r in fr) + ")")
    print(f"\nVendi score, d = {ARGS.vendi_dim}: median seconds ({ARGS.repeats} rounds)\n")
    print("| N | kernel | scipy/numpy | mmalign | ratio (scipy/mmalign) | VS (scipy) | abs diff | others' CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in vs:
        print(f"| {r['n']} | {r['kernel']} | {r['scipy']:.3f} | {r['mm']:.3f} | {r['scipy'] / r['mm']:.1f}x | "
              f"{r['v_scipy']:.4f} | {abs(r['v_mm'] - r['v_scipy']):.1e} | {r['others']:.0%} |")


if __name__ == "__main__":
    main()

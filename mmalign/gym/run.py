"""The gym evaluation of a run (``eval:`` section), shared by ``mmalign eval`` and the recipes."""

from __future__ import annotations

from pathlib import Path

from mmalign.config import RunConfig


def run_eval(cfg: RunConfig, *, weights: str | Path | None = None) -> dict:
    """Compare the run's fine-tuned model (``eval.weights`` or ``OUTPUT_DIR/final``) with its base on
    ``eval.world``; writes ``eval.json`` and ``compare.png`` to ``eval.out_dir`` (OUTPUT_DIR/eval)."""
    from mmalign.gym.base import get_world
    from mmalign.gym.evaluate import evaluate_world
    from mmalign.recipes.sample import make_sampler

    ev = cfg.eval
    if not ev.world:
        raise ValueError("eval.world: set the gym world that judges (e.g. eval.world=digits)")
    world = get_world(ev.world)
    tuned_path = Path(weights or ev.weights or Path(cfg.output_dir) / "final")
    if not tuned_path.exists():
        raise FileNotFoundError(f"eval: no fine-tuned weights at {tuned_path} (train first, or set eval.weights)")
    base = make_sampler(cfg.adapter, None, world.sample_kwargs)
    tuned = make_sampler(cfg.adapter, tuned_path, world.sample_kwargs)
    return evaluate_world(world, base, tuned, num_prompts=ev.num_prompts, samples_per_prompt=ev.samples_per_prompt,
                          seed=ev.seed, tolerance=ev.tolerance, dim_weights=ev.dim_weights,
                          out_dir=ev.out_dir or Path(cfg.output_dir) / "eval", batch_size=ev.batch_size)


def summary_line(result: dict) -> str:
    dims = ", ".join(f"{d} {v['base']:.3f}->{v['tuned']:.3f}" for d, v in result["reward"].items())
    return (f"win rate vs base {result['win_rate']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] "
            f"(strict {result['win_rate_strict']:.3f}, non-tie share {result['nontie_win_share']:.3f}); {dims}; "
            f"Vendi {result['vendi']['base']:.2f}->{result['vendi']['tuned']:.2f}")

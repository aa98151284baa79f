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
    out_dir = Path(ev.out_dir or Path(cfg.output_dir) / "eval")
    result = evaluate_world(world, base, tuned, num_prompts=ev.num_prompts, samples_per_prompt=ev.samples_per_prompt,
                            seed=ev.seed, tolerance=ev.tolerance, dim_weights=ev.dim_weights, out_dir=out_dir,
                            batch_size=ev.batch_size)
    write_report(Path(cfg.output_dir), out_dir, result)
    return result


def write_report(run_dir: Path, eval_dir: Path, result: dict) -> Path:
    """``RUN_DIR/report.md``: the verdict, the figures of ``eval.json`` as tables, and links to the
    side-by-side samples and the training curves that exist."""
    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(run_dir.resolve()))
        except ValueError:
            return str(path.resolve())

    verdict = "passed" if result["passed"] else "not passed"
    lines = [
        f"# Alignment report: {result['world']}", "",
        f"Win rate of the fine-tuned model against its base on {result['n_samples']} held-out samples "
        f"({result['n_prompts']} prompts, shared seeds; ground-truth ties within {result['tolerance']} count half): "
        f"**{result['win_rate']:.3f}** (95% interval [{result['ci_low']:.3f}, {result['ci_high']:.3f}]; "
        f"{verdict}: the lower bound must exceed 0.5).", "",
        f"Wins / ties / losses: {result['wins']} / {result['ties']} / {result['losses']}; strict win rate "
        f"{result['win_rate_strict']:.3f}; share of wins among decided pairs {result['nontie_win_share']:.3f}.", "",
        "| dimension | base | tuned | change |", "|---|---|---|---|",
        *[f"| {d} | {v['base']:.3f} | {v['tuned']:.3f} | {v['change']:+.3f} |" for d, v in result["reward"].items()],
        f"| diversity (mean per-prompt Vendi) | {result['vendi']['base']:.2f} | {result['vendi']['tuned']:.2f} | "
        f"{result['vendi']['tuned'] - result['vendi']['base']:+.2f} |", "",
    ]
    figures = [("Samples, base (left) and tuned (right)", eval_dir / "compare.png"),
               ("Side by side", eval_dir / "compare.md"), ("Training curves", run_dir / "curves.png"),
               ("Per-round metrics", run_dir / "rounds.png")]
    for title, path in figures:
        if path.is_file():
            link = f"![{title}]({rel(path)})" if path.suffix == ".png" else f"[{title}]({rel(path)})"
            lines += [f"## {title}", "", link, ""]
    lines += [f"All figures: [{rel(eval_dir / 'eval.json')}]({rel(eval_dir / 'eval.json')}).", ""]
    path = run_dir / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def summary_line(result: dict) -> str:
    dims = ", ".join(f"{d} {v['base']:.3f}->{v['tuned']:.3f}" for d, v in result["reward"].items())
    return (f"win rate vs base {result['win_rate']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] "
            f"(strict {result['win_rate_strict']:.3f}, non-tie share {result['nontie_win_share']:.3f}); {dims}; "
            f"Vendi {result['vendi']['base']:.2f}->{result['vendi']['tuned']:.2f}")

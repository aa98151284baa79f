"""``metrics.jsonl`` (one JSON object per logged step) and the PNG of its curves."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsFile:
    """Appends ``{"step": ..., "split": ..., **values}`` lines; on resume, drops lines past the checkpoint."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, "split": split, **values}) + "\n")


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a killed run: drop it


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(path: str | Path, out: str | Path, keys: tuple[str, ...]) -> Path | None:
    """One panel per key, train and eval curves against the step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    keys = tuple(k for k in keys if any(k in r for r in rows))
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for split, style in (("train", "-"), ("eval", "o-")):
            pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)

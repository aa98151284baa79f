"""``mmalign score CONFIG INPUT``: score a folder or a JSONL of samples with any reward.

INPUT is
- a JSONL file of ``{"path": media, "prompt": ...}`` rows (paths relative to the file), or of
  ``{"text": ..., "prompt": ...}`` rows for text rewards; or
- a folder of media files, with prompts from an optional ``metadata.jsonl`` in the Hugging Face
  imagefolder convention (``{"file_name": ..., "prompt": ...}``) or ``--prompt`` for all.

Writes ``scores.csv`` and ``scores.jsonl`` (one row per sample, one column per reward dimension,
plus ``total``: the weighted sum) and ``summary.json`` (mean, std, min, max per dimension).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmalign.data import media
from mmalign.data.pairs import DataError
from mmalign.rewards.base import Reward, weighted_sum

SUFFIXES = {
    "image": media.IMAGE_SUFFIXES,
    "video": media.CONTAINER_SUFFIXES | {".gif"},
    "audio": {".wav", ".flac", ".ogg", ".mp3"},
}


def read_items(source: Path, modality: str, prompt: str | None) -> list[dict]:
    """``[{"id", "path" or "text", "prompt"}]`` from a JSONL file or a folder."""
    if source.is_dir():
        meta = {}
        if (source / "metadata.jsonl").is_file():
            for line in (source / "metadata.jsonl").read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    meta[row["file_name"]] = row.get("prompt", row.get("text"))
        files = sorted(p for p in source.iterdir()
                       if p.suffix.lower() in SUFFIXES.get(modality, ()) or (modality == "video" and p.is_dir()))
        if not files:
            raise DataError(str(source), None, None, f"no {modality} files found")
        return [{"id": p.name, "path": str(p), "prompt": meta.get(p.name, prompt)} for p in files]
    items = []
    for lineno, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(str(source), lineno, None, f"broken JSON: {err.msg}") from None
        key = "text" if modality == "text" else "path"
        if key not in row:
            raise DataError(str(source), lineno, key, "missing")
        value = row[key] if modality == "text" else str(media.resolve_media_path(row[key], source))
        items.append({"id": row.get("id", f"{source.name}:{lineno}"), key: value, "prompt": row.get("prompt", prompt)})
    return items


def load_item(item: dict, modality: str, sample_rate: int | None):
    if modality == "image":
        return media.load_image(item["path"])
    if modality == "video":
        return media.load_video(item["path"])
    if modality == "audio":
        return media.load_audio(item["path"], sample_rate)
    return item["text"]


def run_score(reward: Reward, source: str | Path, out_dir: str | Path, *, prompt: str | None = None,
              batch_size: int = 16, sample_rate: int | None = None, weights: dict[str, float] | None = None,
              progress: bool = True) -> dict:
    """Score every item of ``source``; write the table and summary to ``out_dir``; return the summary."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise DataError(str(source), None, None, "not found")
    items = read_items(source, reward.modality, prompt)
    rows: list[dict] = []
    for start in tqdm(range(0, len(items), batch_size), desc="score", disable=not progress):
        chunk = items[start: start + batch_size]
        loaded = [load_item(it, reward.modality, sample_rate) for it in chunk]
        prompts = [it["prompt"] for it in chunk]
        prompts = None if all(p is None for p in prompts) else prompts
        if reward.modality == "text":
            groups = [(list(range(len(chunk))), loaded)]
        else:  # media of different shapes cannot be stacked: score each shape group together
            by_shape: dict[tuple, list[int]] = {}
            for i, x in enumerate(loaded):
                by_shape.setdefault(tuple(x.shape), []).append(i)
            groups = [(idx, torch.stack([loaded[i] for i in idx])) for idx in by_shape.values()]
        scores = [None] * len(chunk)
        with torch.no_grad():
            for idx, batch in groups:
                out = reward(batch, [prompts[i] for i in idx] if prompts else None, sample_rate=sample_rate)
                for j, i in enumerate(idx):
                    scores[i] = out[j].float().cpu()
        for it, s in zip(chunk, scores):
            row = {"id": it["id"], "prompt": it["prompt"], **{d: float(v) for d, v in zip(reward.dims, s)}}
            row["total"] = float(weighted_sum(s[None], reward.dims, weights)[0])
            rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["id", "prompt", *reward.dims, "total"]
    with (out_dir / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = torch.tensor([[r[d] for d in (*reward.dims, "total")] for r in rows])
    summary = {"n": len(rows), "source": str(source), **{
        d: {"mean": float(table[:, i].mean()), "std": float(table[:, i].std()) if len(rows) > 1 else 0.0,
            "min": float(table[:, i].min()), "max": float(table[:, i].max())}
        for i, d in enumerate((*reward.dims, "total"))}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

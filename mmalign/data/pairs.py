"""Preference pairs from JSONL, JSON, Parquet or a local ``datasets`` directory, validated.

Accepted record shapes (the common ones on the Hub)::

    {"prompt": "2+2=", "chosen": "4", "rejected": "5"}                      # plain text
    {"prompt": [{"role": "user", "content": "hi"}],                          # conversational
     "chosen": [{"role": "assistant", "content": "hello"}], "rejected": [...]}
    {"chosen": [user, assistant_a], "rejected": [user, assistant_b]}        # implicit prompt

plus optional ``tie: bool``, per-dimension ``labels: {dim: chosen|rejected|tie}`` and scalar
``reward_chosen`` / ``reward_rejected``, all carried through for reward modeling and RWR.
A bad record fails validation naming the file, the line (row for Parquet/datasets) and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.registry import register

LABEL_VALUES = ("chosen", "rejected", "tie")


class DataError(ValueError):
    """A record that cannot be trained on; the message names file, line and field."""

    def __init__(self, source: str, line: int | None, field_name: str | None, message: str):
        where = f"{source}:{line}" if line is not None else source
        what = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{what} {message}")
        self.source, self.line, self.field = source, line, field_name


Text = str | list[dict[str, str]]


@dataclass
class PreferencePair:
    prompt: Text
    chosen: Text
    rejected: Text
    tie: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    reward_chosen: float | dict[str, float] | None = None
    reward_rejected: float | dict[str, float] | None = None
    source: str = ""  # "file:line", for error messages downstream
    data_file: str = ""  # the file (or datasets directory) it came from: relative media paths start there

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


# --------------------------------------------------------------------------- reading


def _read_rows(path: Path, split: str):
    """Yield ``(line_or_row_number, record_or_exception)`` from any supported source."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # not a saved dataset
            raise DataError(str(path), None, None, f"not a `datasets` directory ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(str(path), None, None, f"no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
        for i, row in enumerate(ds):
            yield i, row
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for lineno, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    yield lineno, json.loads(text)
                except json.JSONDecodeError as err:
                    raise DataError(str(path), lineno, None, f"broken JSON: {err.msg} at column {err.colno}") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(str(path), err.lineno, None, f"broken JSON: {err.msg} at column {err.colno}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(str(path), None, None, "a .json file must hold a list of records (or {'data': [...]})")
        for i, row in enumerate(data):
            yield i, row  # record index: JSON arrays have no meaningful line per record
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i, row
    else:
        raise DataError(str(path), None, None, "unsupported format; use .jsonl, .json, .parquet or a datasets directory")


# --------------------------------------------------------------------------- validation


def _check_messages(value: Any, source: str, line: int, name: str) -> list[dict[str, str]]:
    if not value:
        raise DataError(source, line, name, "empty message list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(source, line, f"{name}[{i}]", "each message needs string 'role' and 'content'")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _check_text(value: Any, source: str, line: int, name: str, *, allow_empty: bool = False) -> Text:
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(source, line, name, "empty text")
        return value
    if isinstance(value, list):
        return _check_messages(value, source, line, name)
    raise DataError(source, line, name, f"expected a string or a list of messages, got {type(value).__name__}")


def _split_implicit_prompt(chosen: list, rejected: list, source: str, line: int):
    """``chosen``/``rejected`` as whole conversations: the shared leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise DataError(source, line, "prompt", "missing, and chosen/rejected share no leading messages")
    return chosen[:n], chosen[n:], rejected[n:]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_reward(value: Any, source: str, line: int, name: str) -> float | dict[str, float] | None:
    """A scalar reward or per-dimension rewards ``{dim: number}``."""
    if value is None:
        return None
    if _number(value):
        return float(value)
    if isinstance(value, dict) and value and all(_number(v) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}
    raise DataError(source, line, name, f"expected a number or a mapping {{dimension: number}}, got {value!r}")


def stack_rewards(items: list[dict]) -> dict[str, Any]:
    """``{"rewards": [2B] or [2B, D], "reward_dims": (...)}`` from items holding ``reward_chosen`` /
    ``reward_rejected`` (``{}`` when any item has none), laid out ``[chosen; rejected]``."""
    import torch

    values = [it.get("reward_chosen") for it in items] + [it.get("reward_rejected") for it in items]
    if not values or any(v is None for v in values):
        return {}
    if isinstance(values[0], dict):
        dims = tuple(sorted(values[0]))
        if any(not isinstance(v, dict) or tuple(sorted(v)) != dims for v in values):
            raise ValueError(f"records in one batch name different reward dimensions (expected {dims})")
        return {"rewards": torch.tensor([[v[d] for d in dims] for v in values]), "reward_dims": dims}
    return {"rewards": torch.tensor(values, dtype=torch.float32), "reward_dims": ()}


def validate_record(row: Any, source: str, line: int) -> PreferencePair:
    """Turn one raw record into a :class:`PreferencePair` or raise :class:`DataError`."""
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"a record must be an object, got {type(row).__name__}")
    for name in ("chosen", "rejected"):
        if name not in row or row[name] is None:
            raise DataError(source, line, name, "missing")
    chosen = _check_text(row["chosen"], source, line, "chosen")
    rejected = _check_text(row["rejected"], source, line, "rejected")
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise DataError(source, line, "rejected", "chosen and rejected must both be strings or both message lists")
    prompt = row.get("prompt")
    if prompt is None:
        if not isinstance(chosen, list):
            raise DataError(source, line, "prompt", "missing")
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected, source, line)
    else:
        prompt = _check_text(prompt, source, line, "prompt", allow_empty=True)
        if isinstance(prompt, list) != isinstance(chosen, list):
            raise DataError(source, line, "prompt", "prompt and completions must both be strings or both message lists")
    tie = row.get("tie", False)
    if tie is None:
        tie = False
    if not isinstance(tie, bool):
        raise DataError(source, line, "tie", f"expected true/false, got {tie!r}")
    labels = row.get("labels") or {}
    if not isinstance(labels, dict):
        raise DataError(source, line, "labels", "expected a mapping {dimension: chosen|rejected|tie}")
    for dim, value in labels.items():
        if value not in LABEL_VALUES:
            raise DataError(source, line, f"labels.{dim}", f"{value!r} is not one of {', '.join(LABEL_VALUES)}")
    rewards = {name: _check_reward(row.get(name), source, line, name) for name in ("reward_chosen", "reward_rejected")}
    if (rewards["reward_chosen"] is None) != (rewards["reward_rejected"] is None):
        missing = "reward_rejected" if rewards["reward_rejected"] is None else "reward_chosen"
        raise DataError(source, line, missing, "missing (give both rewards or neither)")
    if isinstance(rewards["reward_chosen"], dict) and (
        not isinstance(rewards["reward_rejected"], dict) or set(rewards["reward_chosen"]) != set(rewards["reward_rejected"])
    ):
        raise DataError(source, line, "reward_rejected", "must name the same dimensions as reward_chosen")
    return PreferencePair(prompt, chosen, rejected, tie, dict(labels), source=f"{source}:{line}", **rewards)


def load_pairs(path: str | Path, *, split: str = "train", max_records: int | None = None) -> list[PreferencePair]:
    """Read and validate every record of ``path``; the first bad one raises :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    pairs = []
    for line, row in _read_rows(path, split):
        pair = validate_record(row, str(path), line)
        pair.data_file = str(path)
        pairs.append(pair)
        if max_records is not None and len(pairs) >= max_records:
            break
    if not pairs:
        raise DataError(str(path), None, None, "no records")
    return pairs


# --------------------------------------------------------------------------- registered component


@dataclass
class PreferenceData:
    train: list[PreferencePair]
    eval: list[PreferencePair]


@register("data", "preference_pairs", runtime_args=("seed",))
def preference_pairs(
    path: str,
    eval_path: str | None = None,
    eval_fraction: float = 0.0,
    split: str = "train",
    max_records: int | None = None,
    seed: int = 0,
) -> PreferenceData:
    """Preference pairs {prompt, chosen, rejected} from JSONL/JSON/Parquet/datasets dir, with a held-out split.

    Args:
        path: training pairs.
        eval_path: held-out pairs; if unset, ``eval_fraction`` of ``path`` is held out.
        eval_fraction: share of ``path`` held out for evaluation when ``eval_path`` is unset.
        split: split to read from a ``DatasetDict`` directory.
        max_records: read at most this many training records.
        seed: (from the run) seeds the held-out split.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction must lie in [0, 1), got {eval_fraction}")
    train = load_pairs(path, split=split, max_records=max_records)
    if eval_path is not None:
        return PreferenceData(train, load_pairs(eval_path, split=split))
    n_eval = int(round(eval_fraction * len(train)))
    if n_eval == 0:
        return PreferenceData(train, [])
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return PreferenceData([p for i, p in enumerate(train) if i not in held], [train[i] for i in sorted(held)])

import json

import pytest

from mmalign.data import DataError, load_pairs
from mmalign.data.pairs import preference_pairs

from ..conftest import write_jsonl

USER = {"role": "user", "content": "hi"}


def test_plain_jsonl_with_ties_labels_and_rewards(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b", "tie": True, "labels": {"VQ": "tie", "TA": "chosen"},
         "reward_chosen": 1, "reward_rejected": 0.5, "extra": "ignored"},
        {"prompt": "q", "chosen": "c", "rejected": "d"},
    ])
    pairs = load_pairs(path)
    assert [p.prompt for p in pairs] == ["p", "q"]
    assert pairs[0].tie and pairs[0].labels == {"VQ": "tie", "TA": "chosen"}
    assert (pairs[0].reward_chosen, pairs[0].reward_rejected) == (1.0, 0.5)
    assert not pairs[1].tie and pairs[1].labels == {}
    assert pairs[1].source.endswith("p.jsonl:2")


def test_conversational_and_implicit_prompt(tmp_path):
    a = {"role": "assistant", "content": "hello"}
    b = {"role": "assistant", "content": "go away"}
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": [USER], "chosen": [a], "rejected": [b]},
        {"chosen": [USER, a], "rejected": [USER, b]},
    ])
    explicit, implicit = load_pairs(path)
    assert explicit.conversational and implicit.conversational
    assert implicit.prompt == [USER] and implicit.chosen == [a] and implicit.rejected == [b]


def test_json_parquet_and_datasets_directory(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    for source in ("p.json", "p.parquet", "ds"):
        assert len(load_pairs(tmp_path / source)) == 3, source


@pytest.mark.parametrize(
    "line, field, message",
    [
        ('{"prompt": "p", "rejected": "b"}', "chosen", "missing"),
        ('{"prompt": "p", "chosen": "  ", "rejected": "b"}', "chosen", "empty text"),
        ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "chosen", "expected a string or a list of messages"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "tie": "yes"}', "tie", "expected true/false"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "labels": {"VQ": "win"}}', "labels.VQ", "not one of"),
        ('{"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "x"}]}',
         "chosen[0]", "'role' and 'content'"),
        ('{"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "x"}]}', "rejected", "both"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, line, field, message):
    good = '{"prompt": "p", "chosen": "a", "rejected": "b"}'
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    text = str(err.value)
    assert f"bad.jsonl:3: field '{field}':" in text and message in text
    assert err.value.line == 3 and err.value.field == field


def test_broken_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", ['{"prompt": "p", "chosen": "a", "rejected": "b"}', "", '{"prompt": "p",'])
    with pytest.raises(DataError, match=r"broken.jsonl:3: broken JSON"):
        load_pairs(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported format"):
        load_pairs(tmp_path / "x.csv")


def test_held_out_split_is_seeded_and_disjoint(pairs_file):
    a = preference_pairs(str(pairs_file), eval_fraction=0.25, seed=1)
    b = preference_pairs(str(pairs_file), eval_fraction=0.25, seed=1)
    c = preference_pairs(str(pairs_file), eval_fraction=0.25, seed=2)
    assert len(a.eval) == 12 and len(a.train) == 36
    assert [p.source for p in a.eval] == [p.source for p in b.eval]
    assert [p.source for p in a.eval] != [p.source for p in c.eval]
    assert not {p.source for p in a.eval} & {p.source for p in a.train}

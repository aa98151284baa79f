"""The README's main job, ``mmalign train configs/quickstart.yaml``, shortened: every stage runs
(generate and label pairs from the digits base, Flow-DPO with LoRA, evaluate against the base, report)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mmalign.cli import main

from ..conftest import ROOT


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quickstart_config_is_the_readme_main_job():
    readme = (ROOT / "README.md").read_text()
    assert "mmalign train configs/quickstart.yaml" in readme
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert cfg["data"]["world"] == cfg["eval"]["world"] == "digits"
    assert cfg["objective"]["name"] == "flow_dpo" and cfg["adapter"]["lora"]


def test_short_quickstart_runs_end_to_end_and_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "qs"
    overrides = [f"output_dir={out}", "data.num_prompts=6", "data.candidates=2", "data.eval_fraction=0.34",
                 "train.max_steps=3", "train.batch_size=2", "train.eval_every=3", "train.save_every=3",
                 "train.progress=false", "accelerate.log_with=[]", "eval.num_prompts=2", "eval.samples_per_prompt=2"]
    assert main(["train", "configs/quickstart.yaml", *overrides]) == 0
    assert "[mmalign] digits: win rate vs base" in capsys.readouterr().out
    assert len((out / "generated" / "pairs.jsonl").read_text().splitlines()) == 6  # one pair per prompt
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert result["n_samples"] == 4 and set(result["reward"]) == {"TA", "VQ"}
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()
    for name in ("curves.png", "eval/compare.png", "report.md"):
        assert (out / name).stat().st_size > 500, name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("split") == "train"] == [1, 2, 3]

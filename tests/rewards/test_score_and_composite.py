import csv
import json

import pytest
import torch
import yaml
from PIL import Image

from mmalign import registry
from mmalign.cli import main
from mmalign.config import ConfigError
from mmalign.rewards import Composite, Reward, weighted_sum


@registry.register("reward", "test_brightness")
class Brightness(Reward):
    """Mean pixel value (test reward)."""

    dims, modality = ("bright",), "image"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def forward(self, samples, prompts=None, *, sample_rate=None):
        return self.scale * samples.float().mean(dim=(1, 2, 3))[:, None]


@registry.register("reward", "test_prompt_match")
class PromptMatch(Reward):
    """1 if the prompt says 'bright' (test reward)."""

    dims, modality = ("says_bright", "prompt_len"), "image"

    def forward(self, samples, prompts=None, *, sample_rate=None):
        return torch.tensor([[float("bright" in p), float(len(p))] for p in prompts])


def test_weighted_sum_and_composite():
    r = torch.tensor([[1.0, 2.0]])
    assert weighted_sum(r, ("TA", "VQ"), {"TA": 0.5}).tolist() == [0.5]
    assert weighted_sum(r, ("TA", "VQ")).tolist() == [3.0]
    with pytest.raises(ValueError, match="unknown dimensions"):
        weighted_sum(r, ("TA", "VQ"), {"MQ": 1.0})
    comp = Composite({"b": {"name": "test_brightness", "scale": 2.0}, "p": {"name": "test_prompt_match"}},
                     weights={"b/bright": 1.0, "p/says_bright": 10.0})
    assert comp.dims == ("b/bright", "p/says_bright", "p/prompt_len")
    images = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -0.5)])
    out = comp(images, ["bright", "dark"])
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 6.0], [-1.0, 0.0, 4.0]]))
    torch.testing.assert_close(comp.total(out), torch.tensor([11.0, -1.0]))
    with pytest.raises(ConfigError, match="reward.rewards.x.scale: expected a float"):
        Composite({"x": {"name": "test_brightness", "scale": "big"}})


def test_score_command_on_a_folder_with_metadata(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, value in (("a.png", 255), ("b.png", 0), ("c.png", 128)):
        Image.new("RGB", (8, 8), (value,) * 3).save(folder / name)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "prompt": "bright"}) + "\n")
    cfg = tmp_path / "score.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"),
                                   "reward": {"name": "composite", "rewards": {
                                       "b": {"name": "test_brightness"}, "p": {"name": "test_prompt_match"}}}}))
    assert main(["score", str(cfg), str(folder), "--prompt", "dark"]) == 0
    rows = list(csv.DictReader((tmp_path / "o" / "scores" / "scores.csv").open()))
    assert [r["id"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert [r["prompt"] for r in rows] == ["bright", "dark", "dark"]
    assert float(rows[0]["b/bright"]) == pytest.approx(1.0) and float(rows[1]["b/bright"]) == pytest.approx(-1.0)
    summary = json.loads((tmp_path / "o" / "scores" / "summary.json").read_text())
    assert summary["n"] == 3 and summary["p/says_bright"]["mean"] == pytest.approx(1 / 3)
    assert "mean" in capsys.readouterr().out


def test_score_command_on_a_jsonl_and_errors(tmp_path, capsys):
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "w.png")
    Image.new("RGB", (4, 6), (0, 0, 0)).save(tmp_path / "k.png")  # a different size: scored on its own
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"path": "w.png", "prompt": "x"}) + "\n" + json.dumps({"path": "k.png", "prompt": "y"}) + "\n")
    cfg = tmp_path / "score.yaml"
    cfg.write_text(yaml.safe_dump({"reward": {"name": "test_brightness"}}))
    assert main(["score", str(cfg), str(items), "--out", str(tmp_path / "s")]) == 0
    rows = [json.loads(l) for l in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert [round(r["bright"], 4) for r in rows] == [1.0, -1.0] and rows[0]["total"] == rows[0]["bright"]
    items.write_text(json.dumps({"prompt": "x"}) + "\n")
    assert main(["score", str(cfg), str(items)]) == 2
    assert "items.jsonl:1: field 'path': missing" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({"reward": {"name": "test_brightnes"}}))
    assert main(["score", str(cfg), str(items)]) == 2
    assert "did you mean 'test_brightness'" in capsys.readouterr().err

"""Every shipped config loads and validates (keys, types, names) without touching the network."""

from pathlib import Path

import pytest

from mmalign.cli import main

from .conftest import ROOT

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


def test_there_are_configs_for_every_modality():
    names = {p.parent.name for p in CONFIGS}
    assert {"text", "image", "video", "audio", "rewards"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_validates(path: Path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs use paths relative to the repository root
    shipped_data = path.parent.name == "text"  # only the text world ships its data
    args = ["validate", str(path)] + ([] if shipped_data else ["--no-data"])
    assert main(args) == 0, capsys.readouterr().err

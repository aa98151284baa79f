"""Shared by the guidance tests: the session's tiny pipelines and an untrained latent reward model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmalign.guidance import LatentRewardModel


@pytest.fixture(scope="module")
def tiny(tiny_pipelines):
    return tiny_pipelines


def untrained_rm(tmp_path: Path, pipeline: Path, dims=("TA", "VQ"), **kwargs) -> Path:
    """A small, randomly initialised latent reward model of ``pipeline`` saved under ``tmp_path/rm``."""
    out = tmp_path / "rm"
    LatentRewardModel(str(pipeline), dims=list(dims), width=8, depth=2, **kwargs).save_pretrained(str(out))
    return out

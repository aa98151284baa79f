"""Reward models on frozen embedding backbones (CLIP for images/video, CLAP for audio).

Per-dimension MLP heads read ``[e_sample, e_prompt, e_sample ⊙ e_prompt]`` (the prompt terms
only when a text embedder is given), in the manner of CLIP-based aesthetic and preference
predictors. The backbone stays frozen -- to fine-tune a whole backbone use ``text_reward_model``
or ``vlm_reward_model``. Trains through the ``reward_model`` recipe like every reward model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmalign.adapters.base import RewardModelState
from mmalign.data.pairs import DataError, PreferencePair
from mmalign.registry import register
from mmalign.rewards.reward_model import HEADS_FILE, META_FILE, label_vector


class MLPHeads(nn.Module):
    """``[N, in] -> [N, D]``: one small MLP per dimension, stacked."""

    def __init__(self, in_dim: int, hidden: int, num_dims: int):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)) for _ in range(num_dims))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(feats) for head in self.heads], dim=1)


@register("adapter", "embedding_reward_model", runtime_args=("reference_copy",))
class EmbeddingRewardModel(RewardModelState):
    """Reward model on a frozen CLIP/CLAP embedding: per-dimension MLP heads on sample and prompt features."""

    def __init__(
        self,
        embedder: dict,
        text_embedder: dict | None = None,
        dims: list[str] = ("overall",),
        hidden: int = 256,
        resolution: int | list[int] | None = None,
        num_frames: int | None = None,
        seconds: float | None = None,
        sample_rate: int | None = None,
        reference_copy: bool = False,
    ):
        """
        Args:
            embedder: sample embedder, e.g. ``{type: clip_image, model: ViT-B-32, pretrained: openai}``
                or ``{type: clap_audio}``.
            text_embedder: prompt embedder in the same space (``clip_text`` / ``clap_text``); null =
                the reward ignores the prompt.
            dims: reward dimensions, one head each.
            hidden: width of each head's hidden layer.
            resolution, num_frames, seconds, sample_rate: how media are loaded (data's own by default).
            reference_copy: unused (reward models have no reference).
        """
        from mmalign.rewards.embedders import build_embedder

        if not dims or len(set(dims)) != len(dims):
            raise ValueError(f"adapter.dims must be distinct names, got {list(dims)}")
        self.embedder = build_embedder(embedder, "adapter.embedder")
        self.text_embedder = build_embedder(text_embedder, "adapter.text_embedder") if text_embedder else None
        self.modality = self.embedder.modality
        with torch.no_grad():
            width = self.embedder.embed(self._probe()).shape[1]
        self.model = MLPHeads(width * (3 if self.text_embedder else 1), hidden, len(dims))
        self.module: nn.Module = self.model
        self.dims = tuple(dims)
        self.resolution = [resolution, resolution] if isinstance(resolution, int) else resolution
        self.num_frames, self.seconds, self.sample_rate = num_frames, seconds, sample_rate
        self.init_args = {"embedder": embedder, "text_embedder": text_embedder, "dims": list(dims), "hidden": hidden,
                          "resolution": resolution, "num_frames": num_frames, "seconds": seconds,
                          "sample_rate": sample_rate}
        self.ref_model, self.has_reference, self.uses_lora = None, False, False

    def _probe(self):
        return {"image": torch.zeros(1, 3, 32, 32), "video": torch.zeros(1, 3, 2, 32, 32),
                "audio": torch.zeros(1, 1, 4800)}.get(self.modality, ["probe"])

    # ------------------------------------------------------------------ data
    def _load(self, record: PreferencePair, name: str) -> torch.Tensor:
        from mmalign.data import media

        path = media.resolve_media_path(getattr(record, name), record.data_file or ".")
        try:
            if self.modality == "image":
                return media.load_image(path, self.resolution)
            if self.modality == "video":
                return media.load_video(path, self.num_frames, self.resolution)
            return media.load_audio(path, self.sample_rate, self.seconds)
        except Exception as err:
            raise DataError(record.source, None, name, str(err) if str(path) in str(err) else f"{path}: {err}") from None

    def encode(self, record: PreferencePair) -> dict:
        """The backbone is frozen, so each item is embedded once here, not at every step."""
        media = torch.stack([self._load(record, "chosen"), self._load(record, "rejected")])
        feats = self.features(media, [record.prompt] * 2, self.sample_rate)
        return {"feats": feats.cpu(), "labels": label_vector(record, self.dims)}

    def collate(self, encoded: list[dict]) -> dict:
        feats = torch.cat([torch.stack([e["feats"][0] for e in encoded]), torch.stack([e["feats"][1] for e in encoded])])
        return {"feats": feats, "labels": torch.tensor([e["labels"] for e in encoded], dtype=torch.long),
                "reward_dims": self.dims}

    def prepare(self, batch: dict, generator=None) -> dict:
        return {}

    # ------------------------------------------------------------------ scoring
    def features(self, samples, prompts: list[str] | None, sample_rate: int | None = None) -> torch.Tensor:
        with torch.no_grad():  # frozen backbone
            e = self.embedder.embed(samples, sample_rate=sample_rate).float()
            if self.text_embedder is None:
                return e
            t = self.text_embedder.embed(prompts).float()
        return torch.cat([e, t, e * t], dim=1)

    def score(self, batch: dict, aux: dict | None = None) -> torch.Tensor:
        """``[2B, D]`` rewards of ``[chosen; rejected]`` items from their precomputed features."""
        return self.module(batch["feats"]).float()

    @torch.no_grad()
    def reward(self, prompts: list[str], samples, *, sample_rate: int | None = None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(self.features(samples, prompts, sample_rate).to(device)).float()

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """The embedder keeps its own dtype (set with its ``dtype`` argument)."""

    # ------------------------------------------------------------------ state
    def save_pretrained(self, path: str, state_dict=None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path / HEADS_FILE))
        (path / META_FILE).write_text(json.dumps({"type": "embedding_reward_model", **self.init_args}, indent=2))


def load_embedding_reward_model(path: str | Path) -> EmbeddingRewardModel:
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    meta.pop("type")
    model = EmbeddingRewardModel(**meta)
    model.model.load_state_dict(load_file(str(path / HEADS_FILE)))
    model.model.eval()
    return model

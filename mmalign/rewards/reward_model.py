"""Learned multi-dimensional preference reward models (VideoReward-style) and their use as rewards.

A reward model maps an item (prompt + completion, or prompt + media) to one score per dimension
(e.g. VQ, MQ, TA) through separate linear heads on a pooled backbone feature. It trains through
the ``reward_model`` recipe with :class:`mmalign.objectives.BradleyTerry` (BT or BT-with-ties per
dimension) and is saved with the z-normalisation statistics of its validation scores; loaded back
as the ``reward_model`` reward, it returns those z-normalised scores (``Overall`` = their sum).

This file holds the text case (any transformers LM backbone, pooled at the last token); the
embedding backbones (CLIP/CLAP) live in :mod:`mmalign.rewards.embedding_reward_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mmalign.adapters.base import LoraSettings, RewardModelState
from mmalign.adapters.causal_lm import DTYPES, collate_text_pairs, encode_text_pair
from mmalign.data.pairs import DataError, PreferencePair
from mmalign.objectives.bradley_terry import LABEL_IDS
from mmalign.registry import register
from mmalign.rewards.base import Reward

META_FILE, HEADS_FILE, ZNORM_FILE = "reward_model.json", "heads.safetensors", "znorm.json"


def label_vector(record: PreferencePair, dims: tuple[str, ...]) -> list[int]:
    """Per-dimension labels (1 chosen better, −1 rejected better, 0 tie); dimensions a record does
    not label take its overall verdict (``tie`` flag, else chosen)."""
    unknown = set(record.labels) - set(dims)
    if unknown:
        raise DataError(record.source, None, "labels", f"dimensions {sorted(unknown)} are not among the model's {list(dims)}")
    default = "tie" if record.tie else "chosen"
    return [LABEL_IDS[record.labels.get(d, default)] for d in dims]


class RewardHeads(nn.Module):
    """One linear head per dimension over a pooled feature: ``[N, hidden] -> [N, D]``."""

    def __init__(self, hidden: int, num_dims: int):
        super().__init__()
        self.proj = nn.Linear(hidden, num_dims)
        nn.init.normal_(self.proj.weight, std=1.0 / hidden**0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled.to(self.proj.weight.dtype))


class TextRewardNet(nn.Module):
    """Backbone + heads as one module, so accelerate wraps and checkpoints them together."""

    def __init__(self, backbone: nn.Module, num_dims: int):
        super().__init__()
        self.backbone = backbone
        self.heads = RewardHeads(backbone.config.hidden_size, num_dims)

    def forward(self, input_ids, attention_mask, last_index) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.heads(pooled).float()


@register("adapter", "text_reward_model", runtime_args=("reference_copy",))
class TextRewardModel(RewardModelState):
    """Reward model on a transformers LM backbone, one head per dimension, pooled at the last token."""

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        tokenizer: str | None = None,
        dims: list[str] = ("overall",),
        lora: LoraSettings | None = None,
        max_length: int = 1024,
        max_prompt_length: int | None = 512,
        gradient_checkpointing: bool = False,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        trust_remote_code: bool = False,
        reference_copy: bool = False,
    ):
        """
        Args:
            pretrained: hub id or directory of the backbone (any ``AutoModel``; an LM head is dropped).
            config: build a random backbone from ``AutoConfig`` arguments instead (tests).
            tokenizer: tokenizer source; defaults to ``pretrained``.
            dims: names of the reward dimensions, one head each (e.g. [VQ, MQ, TA]).
            lora: LoRA on the backbone (heads are always trained); null = full fine-tuning.
            max_length, max_prompt_length: truncation, as for ``causal_lm``.
            gradient_checkpointing, torch_dtype, trust_remote_code: as for ``causal_lm``.
            reference_copy: unused (reward models have no reference).
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if (pretrained is None) == (config is None):
            raise ValueError("adapter: give exactly one of 'pretrained' and 'config'")
        if not dims or len(set(dims)) != len(dims):
            raise ValueError(f"adapter.dims must be distinct names, got {list(dims)}")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or pretrained, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = DTYPES[torch_dtype]
        if pretrained is not None:
            backbone = AutoModel.from_pretrained(pretrained, dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            cfg = dict(config)
            backbone = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg), dtype=dtype)
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(backbone, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                           target_modules=lora.target_modules,
                                                           task_type="FEATURE_EXTRACTION"))
        self.model = TextRewardNet(backbone, len(dims))
        for p in self.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        self.module: nn.Module = self.model
        self.dims = tuple(dims)
        self.uses_lora = lora is not None
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.init_args = {"pretrained": pretrained, "config": config, "tokenizer": tokenizer, "dims": list(dims),
                          "max_length": max_length, "max_prompt_length": max_prompt_length,
                          "trust_remote_code": trust_remote_code}
        self.ref_model, self.has_reference = None, False

    def encode(self, record: PreferencePair) -> dict:
        enc = encode_text_pair(self.tokenizer, record, self.max_length, self.max_prompt_length)
        enc["labels"] = label_vector(record, self.dims)
        return enc

    def collate(self, encoded: list[dict]) -> dict:
        batch = collate_text_pairs(self.tokenizer, encoded)
        batch["labels"] = torch.tensor([e["labels"] for e in encoded], dtype=torch.long)
        batch["reward_dims"] = self.dims
        return batch

    def prepare(self, batch: dict, generator=None) -> dict:
        return {}

    def score(self, batch: dict, aux: dict | None = None) -> torch.Tensor:
        """``[2B, D]`` rewards of ``[chosen; rejected]`` items."""
        p_len = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
        last = p_len + batch["completion_mask"].sum(-1) - 1
        return self.module(batch["input_ids"], batch["attention_mask"], last)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        for p in self.model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)

    def save_pretrained(self, path: str, state_dict=None) -> None:
        """The backbone (PEFT adapter or full weights), the heads and ``reward_model.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.backbone.save_pretrained(path / "backbone", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "backbone")
        save_file({k: v.contiguous() for k, v in self.model.heads.state_dict().items()}, str(path / HEADS_FILE))
        meta = {"type": "text_reward_model", "lora": self.uses_lora, **self.init_args}
        (path / META_FILE).write_text(json.dumps(meta, indent=2))

    @torch.no_grad()
    def reward(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """``[B, D]`` raw scores of ``completions`` to ``prompts`` (plain text)."""
        records = [PreferencePair(p, c, c) for p, c in zip(prompts, completions)]
        batch = self.collate([{**self.encode(r), "labels": [0] * len(self.dims)} for r in records])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return self.score(batch).chunk(2)[0]


def load_text_reward_model(path: str | Path) -> TextRewardModel:
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    backbone_dir = path / "backbone"
    args = {k: meta[k] for k in ("dims", "max_length", "max_prompt_length", "trust_remote_code")}
    if meta["lora"]:
        model = TextRewardModel(pretrained=meta["pretrained"], config=meta["config"], tokenizer=str(backbone_dir), **args)
        from peft import PeftModel

        model.model.backbone = PeftModel.from_pretrained(model.model.backbone, backbone_dir)
    else:
        model = TextRewardModel(pretrained=str(backbone_dir), tokenizer=str(backbone_dir), **args)
    model.model.heads.load_state_dict(load_file(str(path / HEADS_FILE)))
    model.model.eval()
    return model


@register("reward", "reward_model")
class LearnedReward(Reward):
    """A trained reward model (mmalign train with recipe reward_model), z-normalised per dimension."""

    def __init__(self, path: str, normalize: bool = True, device: str | None = None):
        """
        Args:
            path: the ``final/`` directory of a ``reward_model`` run.
            normalize: z-normalise each dimension with the saved validation statistics.
            device: where to run it (default: CUDA if available).
        """
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise ValueError(f"{path} holds no {META_FILE}: not a reward_model run's final directory")
        kind = json.loads(meta_file.read_text())["type"]
        if kind == "text_reward_model":
            self.model, self.modality = load_text_reward_model(path), "text"
        elif kind == "vlm_reward_model":
            from mmalign.rewards.vlm_reward_model import load_vlm_reward_model

            self.model = load_vlm_reward_model(path)
            self.modality = self.model.modality
        else:
            from mmalign.rewards.embedding_reward_model import load_embedding_reward_model

            self.model = load_embedding_reward_model(path)
            self.modality = self.model.modality
        self.dims = self.model.dims
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.model.to(self.device)
        znorm = json.loads((path / ZNORM_FILE).read_text()) if (path / ZNORM_FILE).is_file() else None
        if normalize and znorm is None:
            raise ValueError(f"{path}: no {ZNORM_FILE}; pass normalize: false to use raw scores")
        self.mean = torch.tensor([znorm["mean"][d] for d in self.dims]) if normalize else None
        self.std = torch.tensor([znorm["std"][d] for d in self.dims]) if normalize else None

    def forward(self, samples, prompts=None, *, sample_rate=None):
        if prompts is None:
            raise ValueError("reward_model rewards need the prompts")
        raw = self.model.reward(prompts, samples, sample_rate=sample_rate) if self.modality != "text" else \
            self.model.reward(prompts, samples)
        raw = raw.float().cpu()
        return (raw - self.mean) / self.std.clamp(min=1e-6) if self.mean is not None else raw


def znorm_stats(scores: torch.Tensor, dims: tuple[str, ...]) -> dict:
    """Per-dimension mean/std of ``[N, D]`` scores, as saved next to a reward model."""
    return {"mean": {d: float(scores[:, i].mean()) for i, d in enumerate(dims)},
            "std": {d: float(scores[:, i].std()) if scores.shape[0] > 1 else 1.0 for i, d in enumerate(dims)},
            "n": int(scores.shape[0])}


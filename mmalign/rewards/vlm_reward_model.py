"""VideoReward-style vision-language reward model: a Qwen2-VL backbone, one head per dimension.

The item is a chat: the user turn holds the image or video and the instruction built from the
prompt; the assistant turn holds the reward tokens. With ``pooling="reward_tokens"`` (VideoReward's
design) one special token per dimension (``<|VQ_reward|>``, ...) is appended and dimension ``d`` is
read from its own token's hidden state through its own head; with ``pooling="last"`` the assistant
turn is left open and every head reads the last token. A pair runs as one forward of the ``2B``
items ``[chosen; rejected]`` (same prompt). It trains through the ``reward_model`` recipe and saves
like the text reward model (``reward_model.json``, ``heads.safetensors``, ``backbone/`` with the
processor); :meth:`VLMRewardModel.reward` scores generated media, so it serves as a ``Reward``.

Any backbone that ``AutoModel`` / ``AutoProcessor`` load and that takes the processor's outputs
(``input_ids``, ``pixel_values``, ``image_grid_thw``, ...) works; Qwen2-VL is the tested one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmalign.adapters.base import LoraSettings, RewardModelState
from mmalign.adapters.causal_lm import DTYPES
from mmalign.data.pairs import DataError, PreferencePair
from mmalign.registry import register
from mmalign.rewards.reward_model import HEADS_FILE, META_FILE, RewardHeads, label_vector

DEFAULT_INSTRUCTION = 'Rate the {modality} generated from the prompt "{prompt}".'


class VLMRewardNet(nn.Module):
    """Backbone + heads as one module (accelerate wraps and checkpoints them together)."""

    def __init__(self, backbone: nn.Module, num_dims: int):
        super().__init__()
        self.backbone = backbone
        self.heads = RewardHeads(backbone.config.get_text_config().hidden_size, num_dims)

    def forward(self, inputs: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        """``positions`` ``[N, 1]`` (one token for every head) or ``[N, D]`` (token ``d`` for head ``d``)
        -> ``[N, D]`` float32 rewards."""
        hidden = self.backbone(**inputs, use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        pooled = hidden[rows, positions]  # [N, 1 or D, hidden]
        if positions.shape[1] == 1:
            return self.heads(pooled[:, 0]).float()
        proj = self.heads.proj  # head d reads only its own token: the diagonal of every head on every token
        return ((pooled.to(proj.weight.dtype) * proj.weight).sum(-1) + proj.bias).float()


@register("adapter", "vlm_reward_model", runtime_args=("reference_copy",))
class VLMRewardModel(RewardModelState):
    """Reward model on a vision-language backbone (Qwen2-VL), one head per dimension."""

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        processor: str | None = None,
        dims: list[str] = ("overall",),
        lora: LoraSettings | None = None,
        pooling: Literal["last", "reward_tokens"] = "reward_tokens",
        modality: Literal["image", "video"] = "video",
        num_frames: int = 8,
        resolution: int | list[int] | None = None,
        max_pixels: int | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_prompt_length: int | None = 256,
        max_length: int | None = None,
        gradient_checkpointing: bool = False,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        reference_copy: bool = False,
    ):
        """
        Args:
            pretrained: hub id or directory of the backbone (``AutoModel``: a ``...ForConditionalGeneration``
                checkpoint loads without its LM head), e.g. ``Qwen/Qwen2-VL-2B-Instruct``.
            config: build a random backbone from ``AutoConfig`` arguments instead (tests); needs ``processor``.
            processor: ``AutoProcessor`` source (image/video processor, tokenizer, chat template);
                defaults to ``pretrained``.
            dims: names of the reward dimensions, one head each (e.g. [VQ, MQ, TA]).
            lora: LoRA on the backbone (heads are always trained); null = full fine-tuning.
            pooling: ``reward_tokens``: one special token ``<|{dim}_reward|>`` per dimension ends the
                assistant turn and feeds that dimension's head (added to the tokenizer, embedding
                initialised to the mean, if new); ``last``: every head reads the last token.
            modality: what the records' ``chosen`` / ``rejected`` paths hold.
            num_frames: frames sampled uniformly from each video (even, for Qwen2-VL's temporal patches).
            resolution: resize (cover) and center-crop media to ``S`` or ``[H, W]`` when loading; null keeps it.
            max_pixels: cap on pixels per image / frame in the processor (its ``size.longest_edge``).
            instruction: the user text; ``{prompt}`` and ``{modality}`` are filled in.
            max_prompt_length: the prompt is cut to this many tokens; null = no cut.
            max_length: fail at encoding when a record's full sequence (text + media tokens) is longer.
            gradient_checkpointing, torch_dtype: as for ``causal_lm``.
            reference_copy: unused (reward models have no reference).
        """
        from transformers import AutoConfig, AutoModel, AutoProcessor

        if (pretrained is None) == (config is None):
            raise ValueError("adapter: give exactly one of 'pretrained' and 'config'")
        if config is not None and processor is None:
            raise ValueError("adapter.processor: required with 'config' (a random backbone has no processor)")
        if not dims or len(set(dims)) != len(dims):
            raise ValueError(f"adapter.dims must be distinct names, got {list(dims)}")
        if modality == "video" and num_frames < 1:
            raise ValueError(f"adapter.num_frames must be >= 1, got {num_frames}")
        self.processor = AutoProcessor.from_pretrained(processor or pretrained)
        tok = self.processor.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        if max_pixels is not None:
            for name in ("image_processor", "video_processor"):
                _set_max_pixels(getattr(self.processor, name, None), max_pixels)
        base_vocab = len(tok)
        self.reward_tokens = tuple(f"<|{d}_reward|>" for d in dims) if pooling == "reward_tokens" else ()
        added = tok.add_tokens(list(self.reward_tokens), special_tokens=True) if self.reward_tokens else 0

        dtype = DTYPES[torch_dtype]
        if pretrained is not None:
            backbone = AutoModel.from_pretrained(pretrained, dtype=dtype)
        else:
            cfg = dict(config)
            backbone = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg), dtype=dtype)
        if added:
            _init_new_embeddings(backbone, base_vocab, len(tok))
        if gradient_checkpointing:
            if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5 name
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(backbone, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                           target_modules=lora.target_modules,
                                                           task_type="FEATURE_EXTRACTION"))
        self.model = VLMRewardNet(backbone, len(dims))
        for p in self.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        self.module: nn.Module = self.model
        self.dims, self.modality, self.pooling = tuple(dims), modality, pooling
        self.reward_token_ids = [tok.convert_tokens_to_ids(t) for t in self.reward_tokens]
        self.uses_lora = lora is not None
        self.num_frames = num_frames
        self.resolution = tuple(resolution) if isinstance(resolution, (list, tuple)) else resolution
        self.instruction, self.max_prompt_length, self.max_length = instruction, max_prompt_length, max_length
        self.init_args = {"pretrained": pretrained, "config": config, "processor": processor, "dims": list(dims),
                          "lora": dataclasses.asdict(lora) if lora is not None else None, "pooling": pooling,
                          "modality": modality, "num_frames": num_frames, "resolution": resolution,
                          "max_pixels": max_pixels, "instruction": instruction,
                          "max_prompt_length": max_prompt_length, "max_length": max_length}
        self.ref_model, self.has_reference = None, False

    # ------------------------------------------------------------------ data
    def _load(self, record: PreferencePair, name: str) -> torch.Tensor:
        """One side of a pair as uint8 ``[3, H, W]`` (image) or ``[F, 3, H, W]`` (video)."""
        from mmalign.data.media import load_image, load_video, resolve_media_path

        value = getattr(record, name)
        if not isinstance(value, str):
            raise DataError(record.source, None, name,
                            f"expected a path to the {self.modality}, got {type(value).__name__}")
        path = resolve_media_path(value, record.data_file or ".")
        if not path.exists():
            raise DataError(record.source, None, name, f"{path}: file not found")
        try:
            media = load_image(path, self.resolution) if self.modality == "image" else \
                load_video(path, self.num_frames, self.resolution).permute(1, 0, 2, 3)
        except Exception as err:  # unreadable or wrongly shaped file: say which record and field
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            raise DataError(record.source, None, name, message) from None
        return _to_uint8(media)

    def _prompt(self, prompt: str) -> str:
        if self.max_prompt_length is not None:
            ids = self.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_length:
                prompt = self.processor.tokenizer.decode(ids[: self.max_prompt_length])
        return prompt

    def _chat(self, prompt: str) -> str:
        text = self.instruction.format(prompt=prompt, modality=self.modality)
        messages = [{"role": "user", "content": [{"type": self.modality}, {"type": "text", "text": text}]}]
        if self.reward_tokens:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": "".join(self.reward_tokens)}]})
        open_turn = not self.reward_tokens  # "last" pooling reads the assistant header's last token
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=open_turn)

    def process(self, prompts: list[str], media: list[torch.Tensor]) -> dict:
        """Processor outputs for ``N`` items (uint8 media) plus the pooled ``positions`` ``[N, 1 or D]``."""
        key = "images" if self.modality == "image" else "videos"
        texts = [self._chat(p) for p in prompts]
        out = dict(self.processor(text=texts, **{key: media}, padding=True, return_tensors="pt"))
        ids, mask = out["input_ids"], out["attention_mask"]
        if self.reward_tokens:
            hits = torch.stack([ids == t for t in self.reward_token_ids], dim=-1)  # [N, L, D]
            if not bool((hits.sum(1) == 1).all()):
                raise ValueError("every item must hold each reward token exactly once; does a prompt contain one?")
            positions = hits.int().argmax(1)
        else:  # the last attended token, whichever side the tokenizer pads
            positions = (mask.shape[1] - 1 - mask.flip(-1).int().argmax(-1))[:, None]
        return {**out, "positions": positions, "input_keys": tuple(out)}

    def encode(self, record: PreferencePair) -> dict:
        """Both media of a pair (uint8), the prompt and the per-dimension labels; errors name the record."""
        if not isinstance(record.prompt, str):
            raise DataError(record.source, None, "prompt", f"{self.modality} pairs need a text prompt")
        if any(t in record.prompt for t in self.reward_tokens):
            raise DataError(record.source, None, "prompt", "contains a reward token; they must appear only once")
        enc = {"prompt": self._prompt(record.prompt), "chosen": self._load(record, "chosen"),
               "rejected": self._load(record, "rejected"), "labels": label_vector(record, self.dims)}
        if self.max_length is not None:
            for side in ("chosen", "rejected"):
                n = self.process([enc["prompt"]], [enc[side]])["input_ids"].shape[1]
                if n > self.max_length:
                    raise DataError(record.source, None, side, f"{n} tokens (text + {self.modality}) exceed max_length "
                                    f"{self.max_length}; lower resolution, num_frames or max_pixels")
        return enc

    def collate(self, encoded: list[dict]) -> dict:
        prompts = [e["prompt"] for e in encoded]
        batch = self.process(prompts + prompts, [e["chosen"] for e in encoded] + [e["rejected"] for e in encoded])
        batch["labels"] = torch.tensor([e["labels"] for e in encoded], dtype=torch.long)
        batch["reward_dims"] = self.dims
        return batch

    # ------------------------------------------------------------------ scoring
    def prepare(self, batch: dict, generator=None) -> dict:
        return {}

    def score(self, batch: dict, aux: dict | None = None) -> torch.Tensor:
        """``[N, D]`` float32 rewards of the batch's items (``[chosen; rejected]`` for a collated pair batch)."""
        return self.module({k: batch[k] for k in batch["input_keys"]}, batch["positions"])

    @torch.no_grad()
    def reward(self, prompts: list[str], samples: torch.Tensor, *, sample_rate: int | None = None) -> torch.Tensor:
        """``[B, D]`` raw scores of generated media.

        Args:
            prompts: ``B`` prompts.
            samples: images ``[B, 3, H, W]`` or videos ``[B, 3, F, H, W]`` in [-1, 1] (as the
                model's ``modality``); resized like training data when ``resolution`` is set.
            sample_rate: unused (audio rewards take it).
        """
        want = 4 if self.modality == "image" else 5
        if not isinstance(samples, torch.Tensor) or samples.dim() != want or samples.shape[1] != 3:
            shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            layout = "[B, 3, H, W]" if want == 4 else "[B, 3, F, H, W]"
            raise ValueError(f"{self.modality} reward model expects samples {layout}, got {shape}")
        if len(prompts) != samples.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {samples.shape[0]} samples")
        media = samples.detach().float().cpu()
        if self.modality == "video":
            media = media.permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
        if self.resolution is not None:
            media = _fit(media, self.resolution)
        batch = self.process([self._prompt(p) for p in prompts], list(_to_uint8(media)))
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return self.score(batch)

    # ------------------------------------------------------------------ training plumbing
    def cast_frozen(self, dtype: torch.dtype) -> None:
        for p in self.model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)

    def save_pretrained(self, path: str, state_dict=None) -> None:
        """``backbone/`` (PEFT adapter, or full weights) with the processor, the heads and ``reward_model.json``.

        A LoRA model on a ``config``-built backbone has no base checkpoint to reload, so it is saved merged
        (full weights).
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        backbone = self.model.backbone
        weights = "adapter" if self.uses_lora and self.init_args["pretrained"] is not None else "full"
        if self.uses_lora and weights == "full":
            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(path / "backbone", safe_serialization=True)
        self.processor.save_pretrained(path / "backbone")
        save_file({k: v.contiguous() for k, v in self.model.heads.state_dict().items()}, str(path / HEADS_FILE))
        meta = {"type": "vlm_reward_model", "weights": weights, **self.init_args}
        (path / META_FILE).write_text(json.dumps(meta, indent=2))


def load_vlm_reward_model(path: str | Path, torch_dtype: str = "float32") -> VLMRewardModel:
    """Rebuild a saved :class:`VLMRewardModel` (from ``save_pretrained`` / a ``reward_model`` run's ``final/``)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("type") != "vlm_reward_model":
        raise ValueError(f"{path / META_FILE}: type {meta.get('type')!r}, expected 'vlm_reward_model'")
    backbone_dir = path / "backbone"
    args = {k: meta[k] for k in ("dims", "pooling", "modality", "num_frames", "resolution", "max_pixels",
                                 "instruction", "max_prompt_length", "max_length")}
    if meta["weights"] == "adapter":  # rebuilt exactly as for training (same reward-token rows), then the adapter
        from peft import PeftModel

        model = VLMRewardModel(pretrained=meta["pretrained"], processor=meta["processor"], torch_dtype=torch_dtype,
                               **args)
        model.model.backbone = PeftModel.from_pretrained(model.model.backbone, backbone_dir)
    else:
        model = VLMRewardModel(pretrained=str(backbone_dir), torch_dtype=torch_dtype, **args)
    model.model.heads.load_state_dict(load_file(str(path / HEADS_FILE)))
    model.model.eval()
    return model


def _init_new_embeddings(backbone: nn.Module, old: int, new: int) -> None:
    """Rows ``old..new`` (added reward tokens) := the mean embedding, growing the table if it is too small."""
    if backbone.get_input_embeddings().weight.shape[0] < new:
        backbone.resize_token_embeddings(new, mean_resizing=False)
    with torch.no_grad():
        weight = backbone.get_input_embeddings().weight
        weight[old:new] = weight[:old].float().mean(0).to(weight.dtype)


def _set_max_pixels(proc, max_pixels: int) -> None:
    """Cap pixels per image / frame: Qwen2-VL processors keep it as ``size.longest_edge`` (a dict or SizeDict)."""
    size = getattr(proc, "size", None)
    if size is None:
        return
    if isinstance(size, dict):
        proc.size = {**size, "longest_edge": max_pixels}
    elif dataclasses.is_dataclass(size) and hasattr(size, "longest_edge"):
        proc.size = dataclasses.replace(size, longest_edge=max_pixels)
    if hasattr(proc, "max_pixels"):
        proc.max_pixels = max_pixels


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255] (exact inverse of the media loaders' scaling)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _fit(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[..., 3, H, W]``: resize to cover ``size`` (bicubic, antialiased) and center-crop, as the loaders do."""
    height, width = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[..., top: top + height, left: left + width].reshape(*lead, 3, height, width)

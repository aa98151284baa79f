"""Causal language models (any ``AutoModelForCausalLM``): the text case of the score contract.

``score`` is the summed log-probability of the completion tokens (prompt and padding masked),
with chosen and rejected in one concatenated forward. Sequences are laid out
``[left-padded prompt | right-padded completion]`` so every completion starts in the same column
and the LM head runs only over completion positions (``logits_to_keep``) -- on long prompts this
is most of the logits memory a plain full-sequence forward would spend.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from mmalign.adapters.base import LoraSettings, load_trainable_state_dict, trainable_state_dict
from mmalign.data.pairs import DataError, PreferencePair, stack_rewards
from mmalign.registry import register

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def completion_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of ``targets`` under ``logits``, over positions where ``mask`` is 1.

    Computes ``logit[target] - logsumexp(logits)`` in float32 without materialising a full
    log-softmax, row by row when the logits are in half precision (their fp32 copy is the peak).

    Args:
        logits: ``[N, T, V]`` next-token logits aligned with ``targets``.
        targets: ``[N, T]`` token ids.
        mask: ``[N, T]`` 1 where a target token counts.

    Returns:
        ``[N]`` float32 sums.
    """
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    if logits.dtype == torch.float32:
        norm = torch.logsumexp(logits, dim=-1)
    else:
        norm = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    return ((picked - norm) * mask).sum(-1)


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_text_pair(tokenizer, record: PreferencePair, max_length: int, max_prompt_length: int | None) -> dict:
    """Token ids of a pair's prompt and both completions: plain text directly (EOS appended),
    conversations through the chat template. The prompt keeps its last ``max_prompt_length``
    tokens; completions are cut to fit ``max_length``."""
    if record.conversational:
        if not tokenizer.chat_template:
            raise DataError(record.source, None, "prompt", "conversational data, but the tokenizer has no chat_template")
        prompt_text = tokenizer.apply_chat_template(record.prompt, add_generation_prompt=True, tokenize=False)
        completions = []
        for name in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(record.prompt + getattr(record, name), tokenize=False)
            if not full.startswith(prompt_text):
                raise DataError(record.source, None, name, "the chat template does not extend the prompt")
            completions.append(_ids(tokenizer, full[len(prompt_text):], special=False))
        prompt = _ids(tokenizer, prompt_text, special=False)
    else:
        prompt = _ids(tokenizer, record.prompt, special=True)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        completions = [_ids(tokenizer, record.chosen, special=False) + eos,
                       _ids(tokenizer, record.rejected, special=False) + eos]
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    room = max_length - len(prompt)
    if room <= 0:
        raise DataError(record.source, None, "prompt",
                        f"{len(prompt)} prompt tokens leave no room for the completion within max_length={max_length}")
    return {"prompt": prompt, "chosen": completions[0][:room], "rejected": completions[1][:room],
            "reward_chosen": record.reward_chosen, "reward_rejected": record.reward_rejected}


def collate_text_pairs(tokenizer, encoded: list[dict]) -> dict[str, torch.Tensor]:
    """``[2B, P + C]`` batch: left-padded prompts, right-padded completions, chosen rows first."""
    rows = [(e["prompt"], e["chosen"]) for e in encoded] + [(e["prompt"], e["rejected"]) for e in encoded]
    p_len = max(len(p) for p, _ in rows)
    c_len = max(len(c) for _, c in rows)
    n = len(rows)
    input_ids = torch.full((n, p_len + c_len), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, p_len + c_len), dtype=torch.long)
    completion = torch.zeros((n, c_len), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        input_ids[i, p_len - len(p): p_len] = torch.tensor(p, dtype=torch.long)
        input_ids[i, p_len: p_len + len(c)] = torch.tensor(c, dtype=torch.long)
        attention[i, p_len - len(p): p_len + len(c)] = 1
        completion[i, : len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
            "num_tokens": completion.sum(-1), **stack_rewards(encoded)}


@register("adapter", "causal_lm", runtime_args=("reference_copy",))
class CausalLMAdapter:
    """Causal LM from transformers, scored by summed completion log-probs; LoRA or full fine-tuning."""

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        tokenizer: str | None = None,
        lora: LoraSettings | None = None,
        max_length: int = 1024,
        max_prompt_length: int | None = 512,
        gradient_checkpointing: bool = False,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        trust_remote_code: bool = False,
        reference_copy: bool = True,
    ):
        """
        Args:
            pretrained: hub id or local directory of the model (and tokenizer).
            config: build a randomly initialised model from these ``AutoConfig`` arguments
                (``model_type`` + sizes) instead of ``pretrained``; used by tests.
            tokenizer: tokenizer hub id or directory; defaults to ``pretrained``.
            lora: LoRA settings; ``null`` fine-tunes every weight against a frozen copy.
            max_length: prompt + completion tokens kept.
            max_prompt_length: the prompt keeps its last this-many tokens.
            gradient_checkpointing: recompute activations in the backward pass.
            torch_dtype: dtype the weights are loaded in (trainable ones are kept in float32).
            revision: hub revision of ``pretrained``.
            trust_remote_code: allow the hub repo's own modeling code (off unless you ask).
            reference_copy: (from the recipe) keep a frozen reference copy for full fine-tuning;
                off when the reference scores are precomputed.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if (pretrained is None) == (config is None):
            raise ValueError("adapter: give exactly one of 'pretrained' and 'config'")
        tok_source = tokenizer or pretrained
        if tok_source is None:
            raise ValueError("adapter.tokenizer: required when the model is built from 'config'")
        self.tokenizer = AutoTokenizer.from_pretrained(tok_source, revision=revision, trust_remote_code=trust_remote_code)
        if len(self.tokenizer) < 16:
            # transformers falls back to a near-empty tokenizer when files are missing offline.
            raise ValueError(f"tokenizer from {tok_source!r} has only {len(self.tokenizer)} tokens; is it really there?")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = DTYPES[torch_dtype]
        if pretrained is not None:
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
            )
        else:
            cfg = dict(config)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg), dtype=dtype)
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.ref_model: nn.Module | None = None
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            peft_cfg = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, peft_cfg)
        else:
            if reference_copy:
                self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        for p in model.parameters():  # trainable weights stay fp32 whatever the load dtype
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        self.model = model  # unwrapped, for saving and disabling adapters
        self.module: nn.Module = model  # what forwards run through (accelerate may wrap it)
        self.uses_lora = lora is not None
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self._use_ref = False
        self._keeps_logits = "logits_to_keep" in inspect.signature(self._base_model().forward).parameters

    # ------------------------------------------------------------------ data
    def _base_model(self) -> nn.Module:
        return self.model.get_base_model() if self.uses_lora else self.model

    def encode(self, record: PreferencePair) -> dict:
        """Tokenize a pair: plain text directly, conversations through the chat template."""
        return encode_text_pair(self.tokenizer, record, self.max_length, self.max_prompt_length)

    def collate(self, encoded: list[dict]) -> dict[str, torch.Tensor]:
        return collate_text_pairs(self.tokenizer, encoded)

    # ------------------------------------------------------------------ scoring
    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        return {}  # nothing random: a causal LM's likelihood is exact

    def score(self, batch: dict, aux: dict | None = None) -> torch.Tensor:
        """``[2B]`` summed log-probs of the completion tokens."""
        module = self.ref_model if (self._use_ref and self.ref_model is not None) else self.module
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        completion = batch["completion_mask"]
        c_len = completion.shape[1]
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": c_len + 1} if self._keeps_logits else {}
        logits = module(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                        use_cache=False, **kwargs).logits
        logits = logits[:, -(c_len + 1): -1]  # position P-1+j predicts completion token j
        return completion_logps(logits, input_ids[:, -c_len:], completion)

    @contextmanager
    def reference(self):
        """Score with the reference: LoRA disabled, or the frozen copy."""
        if self.uses_lora:
            with self.model.disable_adapter():
                yield
            return
        if self.ref_model is None:
            raise RuntimeError("no reference model is kept (reference scores were precomputed)")
        self._use_ref = True
        try:
            yield
        finally:
            self._use_ref = False

    @property
    def has_reference(self) -> bool:
        return self.uses_lora or self.ref_model is not None

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Keep frozen weights (LoRA base, reference copy) in the mixed-precision dtype."""
        for p in self.model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
        if self.ref_model is not None:
            self.ref_model.to(dtype)

    # ------------------------------------------------------------------ state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self.model)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state_dict(self.model, state)

    def save_pretrained(self, path: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A PEFT adapter (LoRA) or full weights, plus the tokenizer, in safetensors.
        ``state_dict``: gathered weights when a sharding engine (ZeRO-3/FSDP) holds them."""
        self.model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)

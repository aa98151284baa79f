"""Tiny models and tokenizers built locally, never downloaded: for tests, examples and assets.

transformers' tokenizer classes silently return a near-empty tokenizer when a hub id cannot be
reached offline, so tests build a real byte-level BPE tokenizer here from a small corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is 2 plus 3? Answer: 5",
    "Hello! How can I help you today?",
    "Preference optimisation aligns a policy with human feedback.",
    "0 1 2 3 4 5 6 7 8 9 + - * = ? ! . , : ;",
]


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 320):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with BOS/EOS/PAD and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tiny_causal_lm(out_dir: str | Path, *, seed: int = 0, corpus: Iterable[str] = DEFAULT_CORPUS, **config):
    """Save a random tiny Llama and its tokenizer to ``out_dir`` (loadable with ``from_pretrained``)."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(corpus)
    torch.manual_seed(seed)
    vocab_size = config.pop("vocab_size", len(tokenizer))  # may be padded above the tokenizer's size
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    model = LlamaForCausalLM(tiny_llama_config(vocab_size, **config))
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir

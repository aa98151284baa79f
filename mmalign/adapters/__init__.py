"""Modality adapters: one file per model family, all meeting :class:`ModalityAdapter`."""

from mmalign.adapters.base import LoraSettings, ModalityAdapter
from mmalign.adapters.causal_lm import CausalLMAdapter
from mmalign.adapters.diffusion import DiffusionAdapter

__all__ = ["CausalLMAdapter", "DiffusionAdapter", "LoraSettings", "ModalityAdapter"]

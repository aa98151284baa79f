"""The text world ``arith``: a tiny causal LM that adds, sometimes wrongly and often verbosely.

The base generator (``assets/gym/arith/base``, rebuilt by ``examples/build_gym_arith.py``) is a
2-layer Llama pretrained on generated lines ``"Question: what is a plus b? Answer:<answer>"``
for a, b in 0..12, whose answers are wrong 30% of the time (a miss, a+b ± 1..8) and verbose
40% of the time (" the answer is 7", " 7, because 3 plus 4 makes 7", " well, I think it is 7"...),
independently. Sampling it at temperature 1 reproduces both flaws, so there is something to align
on each dimension of the ground truth:

- ``correct``: 1 if the first integer in the completion equals a + b (parsed from the prompt),
  else 0 (also 0 when the completion holds no integer);
- ``concise``: ``1 / n_words`` with ``n_words`` the whitespace-separated words of the completion,
  i.e. ``1 / (1 + extra words)``: " 7" → 1, " it is 7" → 1/3, " the answer is 7" → 1/4; an
  empty completion scores 0 (saying nothing is not a concise answer).

Prompts: the 169 pairs (a, b) are split once, by a fixed shuffle, into 129 training pairs and 40
held-out evaluation pairs; preference data is only ever generated from the training pairs.
The base LM itself saw every sum during pretraining (its corpus covers all 169), so the held-out
split measures generalisation of the *alignment* to unseen prompts, not of arithmetic.

Diversity features (for Vendi): a hashed bag of character 1-, 2- and 3-grams of the completion
with boundary marks ("^" + text + "$"), counted into 512 buckets with CRC32 (stable across runs
and processes, unlike Python's ``hash``), so two completions are similar when they share wording.
"""

from __future__ import annotations

import random
import re
import zlib

import torch

from mmalign import registry
from mmalign.gym.base import World, register_world
from mmalign.rewards.base import Reward

MAX_OPERAND = 12
NUM_EVAL = 40
SPLIT_SEED = 20240601  # fixes the train/eval split of the (a, b) pairs; never change it
FEATURE_DIM = 512

PROMPT_RE = re.compile(r"what is (\d+) plus (\d+)\?")
INT_RE = re.compile(r"\d+")


def arith_prompt(a: int, b: int) -> str:
    return f"Question: what is {a} plus {b}? Answer:"


def all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]


def split_pairs() -> dict[str, list[tuple[int, int]]]:
    """The fixed split: ``{"train": 129 pairs, "eval": 40 pairs}``, each sorted."""
    order = all_pairs()
    random.Random(SPLIT_SEED).shuffle(order)
    return {"eval": sorted(order[:NUM_EVAL]), "train": sorted(order[NUM_EVAL:])}


def parse_prompt(prompt: str) -> tuple[int, int]:
    m = PROMPT_RE.search(prompt)
    if m is None:
        raise ValueError(f"gym_arith: cannot parse 'what is a plus b?' from prompt {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def correct(completion: str, a: int, b: int) -> float:
    m = INT_RE.search(completion)
    return float(m is not None and int(m.group()) == a + b)


def concise(completion: str) -> float:
    n = len(completion.split())
    return 1.0 / n if n else 0.0


@registry.register("reward", "gym_arith")
class ArithReward(Reward):
    """Ground truth of the arith gym world: correct (first integer == a+b) and concise (1/words)."""

    dims = ("correct", "concise")
    modality = "text"

    def forward(self, samples, prompts=None, *, sample_rate=None):
        if prompts is None or len(prompts) != len(samples):
            raise ValueError(f"gym_arith needs one prompt per sample, got {len(samples)} samples and "
                             f"{None if prompts is None else len(prompts)} prompts")
        rows = []
        for text, prompt in zip(samples, prompts):
            a, b = parse_prompt(prompt)
            rows.append([correct(text, a, b), concise(text)])
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 2)


def char_ngram_features(texts: list[str], dim: int = FEATURE_DIM, n_max: int = 3) -> torch.Tensor:
    """``[B, dim]`` hashed counts of the character 1..n_max-grams of ``"^" + text + "$"``."""
    out = torch.zeros(len(texts), dim)
    for i, text in enumerate(texts):
        s = f"^{text}$"
        for n in range(1, n_max + 1):
            for j in range(len(s) - n + 1):
                out[i, zlib.crc32(f"{n}:{s[j:j + n]}".encode()) % dim] += 1
    return out


@register_world
class Arith(World):
    """A tiny LM answering "what is a plus b?": imperfect on correctness and on concision."""

    name = "arith"
    modality = "text"
    dims = ("correct", "concise")
    # pure ancestral sampling (top_k=0 turns off transformers' default top-k of 50); the longest
    # corpus answer is 8 tokens + EOS, so 16 new tokens leave room to ramble without cutting answers
    sample_kwargs = {"max_new_tokens": 16, "do_sample": True, "temperature": 1.0, "top_k": 0}

    def prompts(self, split: str, n: int | None = None, seed: int = 0) -> list[str]:
        """All prompts of ``split`` in a seeded order; with ``n``, the first ``n`` of that order,
        cycling through fresh seeded shuffles (so prompts repeat) when ``n`` exceeds the split."""
        splits = split_pairs()
        if split not in splits:
            raise ValueError(f"arith: split must be 'train' or 'eval', got {split!r}")
        pool = [arith_prompt(a, b) for a, b in splits[split]]
        rng = random.Random(seed)
        if n is None:
            order = pool[:]
            rng.shuffle(order)
            return order
        out: list[str] = []
        while len(out) < n:
            order = pool[:]
            rng.shuffle(order)
            out += order[: n - len(out)]
        return out

    def reward(self) -> Reward:
        return ArithReward()

    def features(self, samples) -> torch.Tensor:
        return char_ngram_features(list(samples))

"""Rebuild the base generator of the ``arith`` gym world: ``assets/gym/arith/base``.

A 2-layer Llama (~0.12 M parameters, ~0.5 MB) with a locally trained byte-level BPE tokenizer is
pretrained on generated lines ``"Question: what is a plus b? Answer:<answer><eos>"`` for every
a, b in 0..12. Each line's answer is, independently,

- wrong with probability ``--wrong`` (0.3): a miss a+b ± 1..8 (kept non-negative), and
- verbose with probability ``--verbose`` (0.4): one of the templates in ``VERBOSE`` (" the answer
  is 7", " 7, because 3 plus 4 makes 7", " well, I think it is 7", " it is 7"), else just " 7".

So the base, sampled at temperature 1, is imperfect on both ground-truth dimensions of
:mod:`mmalign.gym.arith` (correct, concise). The pretraining corpus covers all 169 sums, including
the 40 pairs that the world holds out for evaluation: the held-out prompts are never used to
generate preference data, but the LM itself has seen them (what the split tests is whether the
alignment carries over to prompts it was not tuned on, not whether the LM can add).

Deterministic (fixed seeds, one thread): the same command on the same machine writes the same files.
At the end it samples the held-out prompts and prints the base's mean ground-truth reward.

    python examples/build_gym_arith.py            # ~1 minute on a 2-core CPU
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from mmalign.gym.arith import Arith, all_pairs, arith_prompt
from mmalign.utils.tiny import build_tokenizer, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]

CONCISE = " {c}"
VERBOSE = (
    " the answer is {c}",
    " {c}, because {a} plus {b} makes {c}",
    " well, I think it is {c}",
    " it is {c}",
)
OFFSETS = tuple(o for o in range(-8, 9) if o)  # wider misses than ±1..3 give a sharper base


def answer(a: int, b: int, rng: random.Random, wrong: float, verbose: float) -> str:
    c = a + b
    if rng.random() < wrong:
        off = rng.choice(OFFSETS)
        c = c + off if c + off >= 0 else c - off
    template = rng.choice(VERBOSE) if rng.random() < verbose else CONCISE
    return template.format(a=a, b=b, c=c)


def measure(path: Path, n_prompts: int = 40, per_prompt: int = 8, seed: int = 0) -> dict[str, float]:
    """Mean ground-truth reward of the base on held-out prompts (pure sampling, as the gym does)."""
    from mmalign.recipes.sample import make_sampler

    world = Arith()
    sampler = make_sampler({"name": "causal_lm", "pretrained": str(path)}, None, world.sample_kwargs, device="cpu")
    prompts = [p for p in world.prompts("eval", n_prompts, seed) for _ in range(per_prompt)]
    samples = sampler(prompts, list(range(len(prompts))))
    r = world.reward()(samples, prompts)
    for p, s in list(zip(prompts, samples))[::per_prompt * 5]:
        print(f"  {p}{s!r}")
    return {d: float(r[:, i].mean()) for i, d in enumerate(world.dims)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "gym" / "arith" / "base"))
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--wrong", type=float, default=0.3, help="share of wrong answers in the corpus")
    parser.add_argument("--verbose", type=float, default=0.4, help="share of verbose answers in the corpus")
    parser.add_argument("--no-measure", action="store_true", help="skip sampling the base at the end")
    args = parser.parse_args()
    t0 = time.time()
    out = Path(args.out)
    rng = random.Random(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    sums = all_pairs()
    # the tokenizer sees every wording with right and near-miss numbers, so all numbers 0..27 and
    # the template words get their own tokens
    corpus = [arith_prompt(a, b) + t.format(a=a, b=b, c=c)
              for a, b in sums for t in (CONCISE, *VERBOSE) for c in (a + b, a + b + 1)]
    corpus += [f" {n}" for n in range(28)]
    tokenizer = build_tokenizer(corpus, vocab_size=400)  # saturates at 336 tokens: every number 0..27 is one token
    from transformers import LlamaForCausalLM

    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                                               num_attention_heads=8, num_key_value_heads=8,
                                               max_position_embeddings=64, **ids))
    model.generation_config.update(**ids)

    # the whole corpus, generated and tokenized up front (one line per sample; no line repeats a draw)
    lines = []
    for _ in range(args.steps * args.batch_size):
        a, b = rng.choice(sums)
        lines.append(f"{arith_prompt(a, b)}{answer(a, b, rng, args.wrong, args.verbose)}{tokenizer.eos_token}")
    enc = tokenizer(lines, return_tensors="pt", padding=True)
    inputs, mask = enc["input_ids"], enc["attention_mask"]
    targets = inputs.masked_fill(mask == 0, -100)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    model.train()
    for step in range(args.steps):
        rows = slice(step * args.batch_size, (step + 1) * args.batch_size)
        n = int(mask[rows].sum(1).max())
        loss = model(input_ids=inputs[rows, :n], attention_mask=mask[rows, :n], labels=targets[rows, :n]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 300 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.0f} s)")

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB, {sum(p.numel() for p in model.parameters()):,} parameters) "
          f"in {time.time() - t0:.0f} s")
    if not args.no_measure:
        means = measure(out)
        print("base mean reward on held-out prompts (40 x 8 samples): "
              + ", ".join(f"{d} {v:.3f}" for d, v in means.items()) + f"  ({time.time() - t0:.0f} s total)")


if __name__ == "__main__":
    main()

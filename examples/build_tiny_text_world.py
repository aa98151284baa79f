"""Rebuild the shipped tiny text world: ``assets/text/arith-lm`` and its preference pairs.

A 2-layer Llama learns "Question: what is a plus b? Answer: c" from a corpus in which 35% of the
answers are wrong, so the base model is imperfect and there is something to align. Preference
pairs put the correct sum (chosen) against a wrong one (rejected); 20 of the 100 prompts are held
out for evaluation. Deterministic: the same command writes the same files.

    python examples/build_tiny_text_world.py            # ~1 minute on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from mmalign.utils.tiny import build_tokenizer, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]


def prompt(a: int, b: int) -> str:
    return f"Question: what is {a} plus {b}? Answer:"


def wrong_answers(a: int, b: int, rng: random.Random, k: int) -> list[int]:
    options = [x for x in range(0, 19) if x != a + b]
    return rng.sample(options, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "text"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--noise", type=float, default=0.35, help="share of wrong answers in the corpus")
    args = parser.parse_args()
    out = Path(args.out)
    rng = random.Random(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    sums = [(a, b) for a in range(10) for b in range(10)]
    corpus = [f"{prompt(a, b)} {a + b}" for a, b in sums] + [f" {n}" for n in range(19)]
    tokenizer = build_tokenizer(corpus, vocab_size=300)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=64, intermediate_size=128,
                                               num_attention_heads=4, num_key_value_heads=2))
    for key in ("bos", "eos", "pad"):
        setattr(model.config, f"{key}_token_id", getattr(tokenizer, f"{key}_token_id"))

    # Pretraining corpus with noisy answers: the base prefers right sums, but not reliably.
    def sample_line() -> str:
        a, b = rng.choice(sums)
        answer = a + b if rng.random() > args.noise else rng.choice(wrong_answers(a, b, rng, 1))
        return f"{prompt(a, b)} {answer}{tokenizer.eos_token}"

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    model.train()
    for step in range(args.steps):
        batch = tokenizer([sample_line() for _ in range(32)], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    model.eval()
    model_dir = out / "arith-lm"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)

    order = sums[:]
    rng.shuffle(order)
    held_out = set(order[:20])
    for split, keep in (("train", lambda s: s not in held_out), ("eval", lambda s: s in held_out)):
        rows = [
            {"prompt": prompt(a, b), "chosen": f" {a + b}", "rejected": f" {w}"}
            for a, b in sums if keep((a, b)) for w in wrong_answers(a, b, rng, 4)
        ]
        path = out / f"arith_pairs_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} {split} pairs to {path}")

    with torch.no_grad():  # how often the base ranks the right sum first among all candidates
        right = 0
        for a, b in sums:
            scores = []
            for c in range(19):
                ids = tokenizer(f"{prompt(a, b)} {c}{tokenizer.eos_token}", return_tensors="pt")["input_ids"]
                n_prompt = len(tokenizer(prompt(a, b))["input_ids"])
                logp = model(ids).logits.log_softmax(-1)[0, n_prompt - 1:-1].gather(-1, ids[0, n_prompt:, None])
                scores.append(logp.sum().item())
            right += int(max(range(19), key=scores.__getitem__) == a + b)
    print(f"base model ranks the right sum first for {right}/100 prompts")


if __name__ == "__main__":
    main()

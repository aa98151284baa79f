"""Reward-model training throughput: mmalign's ``reward_model`` recipe vs TRL's ``RewardTrainer``.

Three sides, each in its own subprocess with the same thread count (``--threads``, also
``OMP_NUM_THREADS``), ``--rounds`` times in rotating order:

- ``mmalign``: ``text_reward_model`` (LM backbone + one linear head, pooled at the last token),
  objective ``bradley_terry`` with ``ties: skip`` and one dimension, i.e. ``-logsigmoid(r_c - r_r)``.
- ``trl``: ``RewardTrainer`` on ``AutoModelForSequenceClassification(num_labels=1)`` loaded from the
  same directory (same loss, pooled at the last non-pad token).
- ``embedding`` (mmalign only, no TRL counterpart): ``embedding_reward_model`` on a random open_clip
  ViT (224 px, registered with ``open_clip.add_model_config``); the backbone is frozen and only the
  MLP head trains, so this shows what running a frozen backbone every step costs.

Text sides share the random Llama (``build_tiny_causal_lm``), the tokenizer, the generated pairs
(a filler preamble of ~``--prompt-tokens`` tokens, completions of 4-``--max-completion`` words), batch
size, lr, ``torch.optim.AdamW`` without weight decay, a constant schedule, grad-norm clipping at 1.0,
fp32, full fine-tuning, no activation checkpointing (TRL: ``bf16=False``, ``activation_checkpointing=False``;
its defaults are on), ``max_length`` 1024 (the parent checks that no pair is truncated and that both
sides tokenize every sequence to the same ids). Step time: mmalign's ``step_time`` from
``metrics.jsonl`` (includes collation); TRL's ``on_step_begin -> on_step_end`` (excludes data loading;
``on_step_end -> on_step_end`` is printed too). Pairs/s = batch size / median step time. Because a
shared machine time-slices the single thread, each side also records its own CPU time per step (whole
loop: ``time.process_time`` between step ends), which other processes barely affect, and the padded
shape of every batch it built (the collators pad differently and the data orders differ), so the CPU
time can be normalised per 1k padded tokens. Medians pool the steps after ``--warmup`` of all rounds;
RSS figures are medians over rounds.

    python benchmarks/bench_reward_model.py          # all sides, tables and ratios (~4 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_dpo_vs_trl import FILLER, cpu_sample, others_load, peak_rss_mb, rss_mb  # noqa: E402

MAX_LENGTH = 1024
SIDES = ("mmalign", "trl", "embedding")
CLIP_NAME = "mmalign-bench-clip-224"


def make_pairs(tok, n: int, prompt_tokens: int, max_words: int, seed: int = 0) -> list[dict]:
    """Prompts padded to ~prompt_tokens by filler; completions are 4..max_words filler words."""
    rng = random.Random(seed)
    words = lambda k: " " + " ".join(rng.choice(FILLER) for _ in range(k))  # noqa: E731
    rows = []
    for _ in range(n):
        prompt = []
        while len(tok(" ".join(prompt) + " Question: say something. Answer:")["input_ids"]) < prompt_tokens:
            prompt.append(rng.choice(FILLER))
        rows.append({"prompt": " ".join(prompt) + " Question: say something. Answer:",
                     "chosen": words(rng.randint(4, max_words)), "rejected": words(rng.randint(4, max_words))})
    return rows


def register_clip(args) -> str:
    import open_clip

    if CLIP_NAME not in open_clip.list_models():
        cfg = {"embed_dim": 256,
               "vision_cfg": {"image_size": 224, "patch_size": 16, "width": args.clip_width, "layers": args.clip_layers,
                              "head_width": 64},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4}}
        path = Path(args.work) / f"{CLIP_NAME}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    return CLIP_NAME


def run_mmalign(args, work: Path, embedding: bool) -> dict:
    import torch
    import yaml

    from mmalign.config import load_config
    from mmalign.recipes.reward_model import RewardModelRecipe

    out = work / ("emb_out" if embedding else "mmalign_out")
    if embedding:
        name = register_clip(args)
        adapter = {"name": "embedding_reward_model", "dims": ["overall"], "hidden": 256,
                   "embedder": {"type": "clip_image", "model": name, "device": "cpu"},
                   "text_embedder": {"type": "clip_text", "model": name, "device": "cpu"}}
        data = work / "images" / "pairs.jsonl"
    else:
        adapter = {"name": "text_reward_model", "pretrained": str(work / "model"), "dims": ["overall"],
                   "max_length": MAX_LENGTH, "max_prompt_length": None, "lora": None}
        data = work / "pairs.jsonl"
    cfg = {"recipe": "reward_model", "seed": 0, "output_dir": str(out), "adapter": adapter,
           "objective": {"name": "bradley_terry", "ties": "skip"},
           "data": {"name": "preference_pairs", "path": str(data)},
           "optim": {"name": "adamw", "lr": args.lr},
           "train": {"max_steps": args.steps, "batch_size": args.batch_size, "progress": False, "plot": False,
                     "lr_scheduler": "constant", "max_grad_norm": 1.0},
           "accelerate": {"log_with": [], "cpu": not torch.cuda.is_available()}}
    (work / "rm.yaml").write_text(yaml.safe_dump(cfg))
    recipe = RewardModelRecipe(load_config(work / "rm.yaml"))
    recipe.setup()
    setup_rss, shapes, backbone_s = rss_mb(), [], []
    samples, cpu, write = [cpu_sample()], [time.process_time()], recipe.metrics.write

    def write_and_sample(*a, **k):  # once per step: machine load and this process's CPU time
        samples.append(cpu_sample())
        cpu.append(time.process_time())
        write(*a, **k)

    recipe.metrics.write = write_and_sample
    ad = recipe.adapter
    collate, features = ad.collate, getattr(ad, "features", None)

    def collate_and_record(encoded):
        batch = collate(encoded)
        if "input_ids" in batch:
            shapes.append((*batch["input_ids"].shape, int(batch["attention_mask"].sum())))
        return batch

    def timed_features(*a, **k):  # the frozen CLIP towers (embedding side only)
        t = time.perf_counter()
        result = features(*a, **k)
        backbone_s.append(time.perf_counter() - t)
        return result

    ad.collate = collate_and_record
    if embedding:
        ad.features = timed_features
    recipe.train()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    return {"step_times": [r["step_time"] for r in train], "loss": [r["loss"] for r in train], "shapes": shapes,
            "cpu_times": [b - a for a, b in zip(cpu, cpu[1:])],
            "backbone_s": backbone_s, "others": [others_load(a, b) for a, b in zip(samples, samples[1:])],
            "setup_rss_mb": setup_rss, "trainable": sum(p.numel() for p in ad.model.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in ad.embedder.model.parameters()) if embedding else 0}


def run_trl(args, work: Path) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, set_seed
    from trl import RewardConfig, RewardTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.inner, self.loop, self.others, self.cpu = None, [], [], [], []
            self.last_end, self.last_cpu = None, time.process_time()  # set just before train()

        def on_step_begin(self, *a, **k):
            self.begin = cpu_sample()

        def on_step_end(self, *a, **k):
            now, cpu = cpu_sample(), time.process_time()
            self.inner.append(now[0] - self.begin[0])
            self.others.append(others_load(self.begin, now))
            self.cpu.append(cpu - self.last_cpu)  # whole loop, like mmalign's: data, step, logging
            if self.last_end is not None:
                self.loop.append(now[0] - self.last_end[0])
            self.last_end, self.last_cpu = now, cpu

    config = RewardConfig(
        output_dir=str(work / "trl_out"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, optim="adamw_torch",
        weight_decay=0.0, seed=0, max_length=MAX_LENGTH,
        bf16=False, fp16=False, activation_checkpointing=False,  # RewardConfig defaults: both on; mmalign: off
        use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    set_seed(0)  # the new score head's init
    model = AutoModelForSequenceClassification.from_pretrained(work / "model", num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    timer, shapes = StepTimer(), []
    dataset = load_dataset("json", data_files=str(work / "pairs.jsonl"), split="train")
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[timer])
    assert len(trainer.train_dataset) == args.pairs, "TRL filtered pairs out (max_length)"
    collate = trainer.data_collator

    def collate_and_record(examples):
        batch = collate(examples)
        shapes.append((*batch["input_ids"].shape, int(batch["attention_mask"].sum())))
        return batch

    trainer.data_collator = collate_and_record
    setup_rss = rss_mb()
    timer.last_cpu = time.process_time()
    trainer.train()
    assert not trainer.model.is_gradient_checkpointing and next(trainer.model.parameters()).dtype == torch.float32
    return {"step_times": timer.inner, "loop_times": timer.loop, "others": timer.others, "shapes": shapes,
            "cpu_times": timer.cpu,
            "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h], "setup_rss_mb": setup_rss,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work, t0 = Path(args.work), time.perf_counter()
    result = run_trl(args, work) if args.side == "trl" else run_mmalign(args, work, args.side == "embedding")
    result.update(total_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
    (work / f"{args.side}.json").write_text(json.dumps(result))


def prepare(args, work: Path) -> list[int]:
    """Model, text pairs (checked: no truncation, same ids on both sides) and image pairs."""
    import numpy as np
    from PIL import Image
    from transformers import AutoTokenizer

    from mmalign.utils.tiny import build_tiny_causal_lm

    build_tiny_causal_lm(work / "model", hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LENGTH)
    tok = AutoTokenizer.from_pretrained(work / "model")
    pairs = make_pairs(tok, args.pairs, args.prompt_tokens, args.max_completion)
    lengths = []
    for p in pairs:
        for k in ("chosen", "rejected"):
            ours = tok(p["prompt"])["input_ids"] + tok(p[k], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert ours == tok(p["prompt"] + p[k] + tok.eos_token)["input_ids"], "sides tokenize differently"
            lengths.append(len(ours))
    assert max(lengths) <= MAX_LENGTH
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (work / "images").mkdir()
    rng, rows = np.random.default_rng(0), []
    for i in range(args.image_pairs):
        for name, lo, hi in (("c", 128, 255), ("r", 0, 128)):
            Image.fromarray(rng.integers(lo, hi, (224, 224, 3), dtype=np.uint8)).save(work / "images" / f"{i}{name}.png")
        rows.append({"prompt": "a bright photo of a cat", "chosen": f"{i}c.png", "rejected": f"{i}r.png"})
    (work / "images" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lengths


def parent(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_rm_") as tmp:
        work = Path(tmp)
        lengths = prepare(args, work)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        results: dict[str, list[dict]] = {s: [] for s in SIDES}
        for r in range(args.rounds):  # rotate the order so bursts of load on the host hit every side
            for side in SIDES[r % 3:] + SIDES[:r % 3]:
                cmd = [sys.executable, __file__, "--side", side, "--work", str(work)] + [
                    f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("side", "work")]
                with (work / f"{side}.log").open("w") as fh:
                    proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    sys.exit(f"{side} failed (rc {proc.returncode}):\n{(work / f'{side}.log').read_text()[-4000:]}")
                results[side].append(json.loads((work / f"{side}.json").read_text()))
    report(args, results, lengths)


def report(args, results: dict[str, list[dict]], lengths: list[int]) -> None:
    import open_clip
    import torch
    import transformers
    import trl

    med, w, bs = statistics.median, args.warmup, args.batch_size
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, open_clip "
          f"{open_clip.__version__}; {args.threads} thread(s); {args.rounds} rounds x {args.steps} steps per side, "
          f"first {w} of each round left out; batch {bs} pairs; text sequences {min(lengths)}-{max(lengths)} tokens")
    pool = lambda s, key, keep=lambda *x: True: [  # noqa: E731  steps after warmup, all rounds
        v for r in results[s] for v, o in zip(r[key][w:args.steps], r["others"][w:]) if keep(o)]
    over = lambda s, f: med([f(r) for r in results[s]])  # noqa: E731  median over rounds
    tokens = lambda s, f: statistics.mean(f(*x) for x in pool(s, "shapes"))  # noqa: E731  per batch
    per_1k = lambda s: med([c / (n * width) * 1e3 for r in results[s]  # noqa: E731
                            for c, (n, width, _) in zip(r["cpu_times"][w:], r["shapes"][w:args.steps])])
    quiet = {s: pool(s, "step_times", lambda o: o < args.quiet) for s in SIDES}
    rows = [("median step time (s)", *(med(pool(s, "step_times")) for s in SIDES)),
            ("pairs/s (batch / median step)", *(bs / med(pool(s, "step_times")) for s in SIDES))]
    if min(len(q) for q in quiet.values()) >= 3:
        rows.append((f"  quiet steps' pairs/s ({'/'.join(str(len(quiet[s])) for s in SIDES)})",
                     *(bs / med(quiet[s]) for s in SIDES)))
    rows += [("median CPU s / step (whole loop)", *(med(pool(s, "cpu_times")) for s in SIDES)),
             ("pairs / CPU-second", *(bs / med(pool(s, "cpu_times")) for s in SIDES)),
             ("CPU ms / 1k padded tokens", per_1k("mmalign"), per_1k("trl"), None),
             ("padded tokens / batch", tokens("mmalign", lambda n, t, _: n * t), tokens("trl", lambda n, t, _: n * t), None),
             ("real tokens / batch", tokens("mmalign", lambda n, t, r: r), tokens("trl", lambda n, t, r: r), None),
             ("setup RSS (MiB)", *(over(s, lambda r: r["setup_rss_mb"]) for s in SIDES)),
             ("peak RSS (MiB)", *(over(s, lambda r: r["peak_rss_mb"]) for s in SIDES)),
             ("peak - setup RSS (MiB)", *(over(s, lambda r: r["peak_rss_mb"] - r["setup_rss_mb"]) for s in SIDES)),
             ("trainable params (M)", *(results[s][0]["trainable"] / 1e6 for s in SIDES))]
    print(f"\n| {'metric':<34} | {'mmalign':>9} | {'TRL':>9} | {'mmalign/TRL':>11} | {'embedding':>9} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 11}|")
    for name, a, b, e in rows:
        emb = f"{e:>9.3f}" if e is not None else f"{'':>9}"
        print(f"| {name:<34} | {a:>9.3f} | {b:>9.3f} | {a / b:>11.3f} | {emb} |")
    loop = [t for r in results["trl"] for t in r["loop_times"][max(0, w - 1):]]
    print(f"\nTRL on_step_end->on_step_end (whole loop incl. data loading, logging): median {med(loop):.3f} s")
    emb = results["embedding"][0]
    share = med([b / t for r in results["embedding"] for b, t in zip(r["backbone_s"][w:], r["step_times"][w:])])
    print(f"embedding: frozen CLIP towers {emb['frozen'] / 1e6:.1f} M params (run every step), trainable heads "
          f"{emb['trainable'] / 1e6:.3f} M; median share of the step spent in the frozen towers {share:.1%}")
    print(f"quiet step: other processes used < {args.quiet:.0%} of the machine's CPU during it")
    for s in SIDES:
        for i, r in enumerate(results[s]):
            print(f"{s} round {i}: median {med(r['step_times'][w:]):.3f} s; loss {r['loss'][0]:.4f} -> "
                  f"{r['loss'][-1]:.4f}; subprocess {r['total_s']:.1f} s"
                  f"\n  step s {[round(t, 2) for t in r['step_times']]}\n  cpu s  {[round(t, 2) for t in r['cpu_times']]}"
                  f"\n  others {[round(o, 2) for o in r['others']]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", choices=SIDES, help="run one side (internal)")
    p.add_argument("--work", help="shared temp dir (internal)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (2x items per forward)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per side per round")
    p.add_argument("--warmup", type=int, default=2, help="first steps of each round left out of the median")
    p.add_argument("--rounds", type=int, default=3, help="rotating runs of each side (pooled)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-completion", type=int, default=32, help="longest completion, in filler words")
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--image-pairs", type=int, default=64)
    p.add_argument("--clip-width", type=int, default=384, help="ViT width (64-wide heads), 224 px, patch 16")
    p.add_argument("--clip-layers", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads on every side")
    p.add_argument("--quiet", type=float, default=0.1,
                   help="a step is 'quiet' when other processes used less than this share of the machine's CPU")
    args = p.parse_args()
    child(args) if args.side else parent(args)


if __name__ == "__main__":
    main()

"""One text-DPO configuration, trained by mmalign and by TRL's ``DPOTrainer``: step time and memory.

Both sides get the same tiny random Llama (saved once to a temp dir), the same tokenizer, the same
generated preference pairs (arithmetic questions behind a filler preamble of ~``--prompt-tokens``
tokens), the same batch size, full fine-tuning against a frozen reference copy, fp32, AdamW
(``torch.optim.AdamW``, no weight decay), constant lr, grad-norm clipping at 1.0, sigmoid loss
with beta 0.1, and no truncation (``max_length`` 1024 on both sides; the script checks that every
pair fits). Each side runs in its own subprocess with the same thread count (``--threads``, also
``OMP_NUM_THREADS``), ``--rounds`` times, alternating which side goes first, and reports:

- step time: median over the steps after ``--warmup`` in every round, pooled. mmalign: the
  ``step_time`` the recipe writes to ``metrics.jsonl`` (wall time of one optimizer step,
  including collation). TRL: a ``TrainerCallback`` timing ``on_step_begin`` -> ``on_step_end``
  (forward/backward/clip/optimizer, not data loading or logging), plus ``on_step_end`` ->
  ``on_step_end`` (the whole loop). Each step also records the share of the machine's CPU that
  *other* processes used meanwhile (``/proc/stat`` minus this process); "quiet steps" are those
  where it stayed under ``--quiet``.
- memory (median over rounds): RSS right after model/trainer setup, peak RSS (``ru_maxrss``) at
  the end, and ``torch.cuda.max_memory_allocated`` when a GPU is used (it is whenever one exists).

The default is one thread: on a shared 2-core machine two OpenMP threads slow down 10-50x whenever
another process takes a core, which swamps any difference between the trainers (``--threads 2``
for the other setting).

    python benchmarks/bench_dpo_vs_trl.py                  # both sides, table and ratios
    python benchmarks/bench_dpo_vs_trl.py --side trl ...   # one side (used internally)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_LENGTH = 1024  # mmalign's default; TRL's max_length is set to the same
FILLER = ("Preference optimisation aligns a policy with human feedback. The quick brown fox jumps "
          "over the lazy dog. Hello! How can I help you today?").split()


def rss_mb() -> float:
    """Current resident set size (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_sample() -> tuple[float, int, int]:
    """(wall time, busy jiffies of the whole machine incl. steal, jiffies of this process)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return time.perf_counter(), sum(f[:8]) - f[3] - f[4], int(own[11]) + int(own[12])


def others_load(a: tuple, b: tuple) -> float:
    """Share of the machine's CPU that other processes used between two samples (0 = quiet)."""
    capacity = (b[0] - a[0]) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / capacity)


def make_pairs(tokenizer, n: int, prompt_tokens: int, seed: int = 0) -> list[dict]:
    """Arithmetic pairs whose prompt is padded by a random filler preamble to ~prompt_tokens tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        question = f" Question: what is {a} plus {b}? Answer:"
        words: list[str] = []
        while len(tokenizer(" ".join(words) + question)["input_ids"]) < prompt_tokens:
            words.append(rng.choice(FILLER))
        wrong = a + b + rng.choice([-2, -1, 1, 2])
        rows.append({"prompt": " ".join(words) + question, "chosen": f" {a + b}", "rejected": f" {wrong}"})
    return rows


def run_mmalign(args, model_dir: Path, data: Path, work: Path) -> dict:
    import torch
    import yaml

    from mmalign.config import load_config
    from mmalign.recipes.offline_preference import OfflinePreference

    cfg = {
        "recipe": "offline_preference", "seed": 0, "output_dir": str(work / "mmalign_out"),
        "adapter": {"name": "causal_lm", "pretrained": str(model_dir), "lora": None,
                    "max_length": MAX_LENGTH, "max_prompt_length": None},
        "objective": {"name": "dpo", "beta": 0.1, "loss_type": "sigmoid"},
        "data": {"name": "preference_pairs", "path": str(data)},
        "optim": {"name": "adamw", "lr": args.lr},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "progress": False, "plot": False,
                  "lr_scheduler": "constant", "max_grad_norm": 1.0},
        "accelerate": {"log_with": [], "cpu": not torch.cuda.is_available()},
    }
    path = work / "mmalign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    recipe = OfflinePreference(load_config(path))
    recipe.setup()
    setup_rss = rss_mb()
    samples, write = [cpu_sample()], recipe.metrics.write  # sample the machine's load at each step's log line

    def write_and_sample(*a, **k):
        samples.append(cpu_sample())
        write(*a, **k)

    recipe.metrics.write = write_and_sample
    recipe.train()  # no evaluate()/cleanup(): checkpoint and final-weight saving are not timed here
    rows = [json.loads(x) for x in (work / "mmalign_out" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    return {"step_times": [r["step_time"] for r in train], "loss": [r["loss"] for r in train],
            "others": [others_load(a, b) for a, b in zip(samples, samples[1:])], "setup_rss_mb": setup_rss}


def run_trl(args, model_dir: Path, data: Path, work: Path) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.inner, self.loop, self.others, self.last_end = None, [], [], [], None

        def _now(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return cpu_sample()

        def on_step_begin(self, *a, **k):
            self.begin = self._now()

        def on_step_end(self, *a, **k):
            now = self._now()
            self.inner.append(now[0] - self.begin[0])
            self.others.append(others_load(self.begin, now))
            if self.last_end is not None:
                self.loop.append(now[0] - self.last_end[0])
            self.last_end = now

    config = DPOConfig(
        output_dir=str(work / "trl_out"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
        max_length=MAX_LENGTH, optim="adamw_torch", weight_decay=0.0, seed=0,
        bf16=False, fp16=False, activation_checkpointing=False,  # DPOConfig defaults: both on; mmalign: off
        use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    timer = StepTimer()
    dataset = load_dataset("json", data_files=str(data), split="train")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer])  # ref_model=None: TRL loads a frozen copy from model_dir
    setup_rss = rss_mb()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_times": timer.inner, "loop_times": timer.loop, "loss": losses, "others": timer.others,
            "setup_rss_mb": setup_rss}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    t0 = time.perf_counter()
    run = run_mmalign if args.side == "mmalign" else run_trl
    result = run(args, work / "model", work / "pairs.jsonl", work)
    result.update(side=args.side, total_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(),
                  cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None)
    (work / f"{args.side}.json").write_text(json.dumps(result))


def parent(args) -> None:
    from transformers import AutoTokenizer

    from mmalign.utils.tiny import build_tiny_causal_lm

    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as tmp:
        work = Path(tmp)
        build_tiny_causal_lm(work / "model", hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=max(1, args.heads // 2), max_position_embeddings=MAX_LENGTH)
        tok = AutoTokenizer.from_pretrained(work / "model")
        pairs = make_pairs(tok, args.pairs, args.prompt_tokens)
        prompt_lens = [len(tok(p["prompt"])["input_ids"]) for p in pairs]
        lengths = [n + len(tok(p[k])["input_ids"]) + 1 for n, p in zip(prompt_lens, pairs)
                   for k in ("chosen", "rejected")]  # + EOS
        assert max(lengths) < MAX_LENGTH, "a pair would be truncated; lower --prompt-tokens"
        (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        results: dict[str, list[dict]] = {"mmalign": [], "trl": []}
        for r in range(args.rounds):  # alternate the order so bursts of load on the host hit both sides
            for side in ("mmalign", "trl") if r % 2 == 0 else ("trl", "mmalign"):
                cmd = [sys.executable, __file__, "--side", side, "--work", str(work)] + [
                    f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("side", "work")]
                log = work / f"{side}.log"
                with log.open("w") as fh:
                    proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    sys.exit(f"{side} failed (rc {proc.returncode}):\n{log.read_text()[-4000:]}")
                results[side].append(json.loads((work / f"{side}.json").read_text()))
    report(args, results, len(tok), prompt_lens)


def report(args, results: dict[str, list[dict]], vocab: int, prompt_lens: list[int]) -> None:
    import torch
    import transformers
    import trl

    med, sides, w = statistics.median, ("mmalign", "trl"), args.warmup
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"{args.threads} thread(s), cuda={torch.cuda.is_available()}")
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, vocab {vocab}; batch {args.batch_size} pairs, "
          f"prompts {min(prompt_lens)}-{max(prompt_lens)} tokens; {args.rounds} rounds x {args.steps} steps per side, "
          f"first {w} of each round left out")
    steps = {s: [t for r in results[s] for t in r["step_times"][w:]] for s in sides}
    quiet = {s: [t for r in results[s] for t, o in zip(r["step_times"][w:], r["others"][w:]) if o < args.quiet]
             for s in sides}
    over_rounds = lambda key: [med([r[key] for r in results[s]]) for s in sides]  # noqa: E731
    rows = [("median step time (s)", *(med(steps[s]) for s in sides))]
    if min(len(q) for q in quiet.values()) >= 3:
        rows.append((f"  quiet steps ({len(quiet['mmalign'])}/{len(quiet['trl'])})", *(med(quiet[s]) for s in sides)))
    rows += [("fastest step (s)", *(min(steps[s]) for s in sides)),
             ("setup RSS (MiB)", *over_rounds("setup_rss_mb")),
             ("peak RSS (MiB)", *over_rounds("peak_rss_mb")),
             ("peak - setup RSS (MiB)",
              *(med([r["peak_rss_mb"] - r["setup_rss_mb"] for r in results[s]]) for s in sides))]
    if results["trl"][0]["cuda_peak_mb"] is not None:
        rows.append(("CUDA max allocated (MiB)", *over_rounds("cuda_peak_mb")))
    print(f"\n| {'metric':<26} | {'mmalign':>9} | {'TRL':>9} | {'mmalign/TRL':>11} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 11}|{'-' * 13}|")
    for name, a, b in rows:
        print(f"| {name:<26} | {a:>9.3f} | {b:>9.3f} | {a / b:>11.3f} |")
    loop = [t for r in results["trl"] for t in r["loop_times"][max(0, w - 1):]]
    print(f"\nTRL on_step_end->on_step_end (whole loop incl. data loading, logging): median {med(loop):.3f} s")
    print(f"quiet step: other processes used < {args.quiet:.0%} of the machine's CPU during it")
    for s in sides:
        for i, r in enumerate(results[s]):
            print(f"{s} round {i}: median {med(r['step_times'][w:]):.3f} s; loss {r['loss'][0]:.4f} -> "
                  f"{r['loss'][-1]:.4f}; subprocess {r['total_s']:.1f} s"
                  f"\n  step s  {[round(t, 2) for t in r['step_times']]}"
                  f"\n  others {[round(o, 2) for o in r['others']]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", choices=["mmalign", "trl"], help="run one side (internal)")
    p.add_argument("--work", help="shared temp dir (internal)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (2x sequences per forward)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per side per round")
    p.add_argument("--warmup", type=int, default=2, help="first steps of each round left out of the median")
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each side (pooled)")
    p.add_argument("--prompt-tokens", type=int, default=96)
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads on both sides (see docstring)")
    p.add_argument("--quiet", type=float, default=0.1,
                   help="a step is 'quiet' when other processes used less than this share of the machine's CPU")
    args = p.parse_args()
    child(args) if args.side else parent(args)


if __name__ == "__main__":
    main()

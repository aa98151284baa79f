"""Recipe ``offline_preference``: DPO-family training on fixed preference pairs, any modality.

``setup -> train -> cleanup`` with the loop written out (no Trainer class). One optimizer step::

    aux = adapter.prepare(batch, generator)          # shared noise/t for flow models; {} for LMs
    policy = adapter.score(batch, aux)               # [2B], chosen first
    with torch.no_grad(), adapter.reference():
        ref = adapter.score(batch, aux)              # or read from the precomputed cache
    losses, metrics = objective(policy, ref, batch, aux)
    accelerator.backward(losses.mean())

Runs unchanged on one CPU, one GPU, or under ``accelerate launch`` (DDP, DeepSpeed, FSDP).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mmalign import registry
from mmalign.config import RunConfig, save_config
from mmalign.optim import build_scheduler
from mmalign.utils import checkpoint as ckpt
from mmalign.utils.metrics import MetricsFile, plot_metrics

PLOT_KEYS = ("loss", "rewards/margin", "rewards/accuracy")


@dataclass
class TrainConfig:
    """The ``train:`` section of ``offline_preference``."""

    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per device per micro-batch."})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm; null = off."})
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = field(default=0.0, metadata={"help": "Used when warmup_steps is 0."})
    log_every: int = 1
    eval_every: int = field(default=0, metadata={"help": "0 = evaluate only at the end."})
    eval_batch_size: int | None = None
    save_every: int = field(default=0, metadata={"help": "Checkpoint period in steps; 0 = only at the end."})
    keep_last: int | None = field(default=2, metadata={"help": "Checkpoints kept; null = all."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last complete checkpoint."})
    precompute_ref: bool = field(
        default=False, metadata={"help": "Score the data with the reference once, cache it on disk, free the copy."}
    )
    plot: bool = True
    progress: bool = True


def batch_indices(n: int, batch_size: int, world: int, rank: int, seed: int, micro_step: int) -> list[int]:
    """Record indices of micro-batch ``micro_step`` on ``rank``: a pure function of its arguments,
    so a resumed run sees exactly the data order of an uninterrupted one."""
    per_epoch = n // (batch_size * world)
    epoch, b = divmod(micro_step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    start = (b * world + rank) * batch_size
    return perm[start: start + batch_size]


@contextmanager
def scoring_with(adapter, module):
    """Forward through ``module`` (e.g. the unwrapped model, for uneven per-rank evaluation)."""
    saved, adapter.module = adapter.module, module
    try:
        yield
    finally:
        adapter.module = saved


@registry.register("recipe", "offline_preference")
class OfflinePreference:
    """DPO-family training on fixed preference pairs (text DPO, Flow-DPO, Diffusion-DPO)."""

    TrainConfig = TrainConfig
    # reward: optional -- labels generated data (data: generated_pairs) when no gym world does
    sections = {"adapter": "required", "objective": "required", "data": "required", "optim": "required",
                "reward": "optional"}
    PLOT_KEYS = PLOT_KEYS

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate.utils import DistributedType

        cfg, tcfg = self.cfg, self.cfg.train
        acfg = cfg.accelerate
        self.ckpt_root = self.out / "checkpoints"
        self.accelerator, resume_from = start_run(cfg, self.ckpt_root,
                                                  gradient_accumulation_steps=tcfg.gradient_accumulation_steps)
        accel = self.accelerator
        self.main = accel.is_main_process

        self.data = registry.build("data", cfg.data, seed=cfg.seed, run=cfg)
        self.objective = registry.build("objective", cfg.objective)
        needs_ref = self.objective.needs_reference
        self.adapter = registry.build("adapter", cfg.adapter, reference_copy=needs_ref and not tcfg.precompute_ref)
        self.train_encoded = self._encode(self.data.train, "train")
        self.eval_encoded = self._encode(self.data.eval, "eval")
        global_batch = tcfg.batch_size * accel.num_processes
        if len(self.train_encoded) < global_batch:
            raise ValueError(
                f"{len(self.train_encoded)} training pairs is fewer than one global batch "
                f"({tcfg.batch_size} per device x {accel.num_processes} processes)"
            )
        if accel.mixed_precision in ("bf16", "fp16"):
            self.adapter.cast_frozen(torch.bfloat16 if accel.mixed_precision == "bf16" else torch.float16)

        self.ref_cache = self._precompute_reference() if tcfg.precompute_ref and needs_ref else None
        params = [p for p in self.adapter.model.parameters() if p.requires_grad]
        optimizer = registry.build("optim", cfg.optim, params=params)
        warmup = tcfg.warmup_steps or math.ceil(tcfg.warmup_ratio * tcfg.max_steps)
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would
        # step it once per process).
        self.scheduler = build_scheduler(optimizer, tcfg.lr_scheduler, warmup_steps=warmup, total_steps=tcfg.max_steps)
        if accel.state.deepspeed_plugin is not None:  # no prepared dataloader tells DeepSpeed the batch size
            accel.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = tcfg.batch_size
        self.adapter.module, self.optimizer = accel.prepare(self.adapter.module, optimizer)
        # Under DeepSpeed/FSDP weights and optimizer state are sharded: checkpoints then hold the
        # engine's own sharded state (accelerate save_state) instead of our safetensors files.
        self.sharded = accel.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        self.params = params

        self.step, self.micro_step = 0, 0
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        elif tcfg.resume and self.main:
            print(f"[mmalign] train.resume=true but no checkpoint in {self.ckpt_root}: starting from scratch")
        self.metrics = MetricsFile(self.out / "metrics.jsonl", resume_step=self.step if tcfg.resume else None) if self.main else None
        if self.main:
            save_config(cfg, self.out / "config.yaml")
        if acfg.log_with:
            accel.init_trackers(acfg.project_name, config=_flat(cfg.to_dict()))

    def _encode(self, records, split: str) -> list[dict]:
        show = self.cfg.train.progress and self.accelerator.is_main_process and len(records) > 200
        return [self.adapter.encode(r) for r in tqdm(records, desc=f"encode {split}", disable=not show)]

    # ------------------------------------------------------------------ reference cache
    def _fingerprint(self) -> str:
        """Hash of the adapter config and every encoded record (tensors by content, not by repr)."""

        def plain(value):
            if isinstance(value, torch.Tensor):
                return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            if dataclasses.is_dataclass(value):
                return dataclasses.asdict(value)
            return str(value)

        h = hashlib.sha256(json.dumps(self.cfg.adapter, sort_keys=True, default=plain).encode())
        for enc in self.train_encoded + self.eval_encoded:
            h.update(json.dumps(enc, sort_keys=True, default=plain).encode())
        return h.hexdigest()

    @torch.no_grad()
    def _precompute_reference(self) -> dict[str, torch.Tensor]:
        """Reference scores of every train/eval pair, computed once (sharded over ranks) and cached."""
        from safetensors.torch import load_file, save_file
        from safetensors import safe_open

        path = self.out / "ref_scores.safetensors"
        fingerprint = self._fingerprint()
        if path.is_file():
            with safe_open(str(path), "pt") as fh:
                if (fh.metadata() or {}).get("fingerprint") == fingerprint:
                    return load_file(str(path))
        accel, adapter = self.accelerator, self.adapter
        adapter.module.to(accel.device)
        cache = {}
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        for split, encoded in (("train", self.train_encoded), ("eval", self.eval_encoded)):
            mine = list(range(accel.process_index, len(encoded), accel.num_processes))
            scores = torch.zeros(len(encoded), 2, device=accel.device)
            for i in tqdm(range(0, len(mine), bs), desc=f"reference scores ({split})", disable=not (self.main and self.cfg.train.progress)):
                idx = mine[i: i + bs]
                batch = _to(adapter.collate([encoded[j] for j in idx]), accel.device)
                context = adapter.reference() if adapter.has_reference else nullcontext()  # step 0: policy == reference
                with context, accel.autocast():
                    s = adapter.score(batch, adapter.prepare(batch, self._generator(-1 - i)))
                scores[idx] = torch.stack(s.float().chunk(2), dim=1)
            cache[split] = accel.reduce(scores, reduction="sum").cpu()  # each row was filled by one rank
        if self.main:
            tmp = path.with_suffix(".tmp")
            save_file(cache, str(tmp), metadata={"fingerprint": fingerprint})
            tmp.replace(path)
        adapter.ref_model = None  # the copy (full fine-tuning) is no longer needed
        return cache

    # ------------------------------------------------------------------ one step
    def _generator(self, micro_step: int) -> torch.Generator:
        """Per-micro-batch randomness (noise, timesteps) as a function of the step: resume-safe."""
        g = torch.Generator(device=self.accelerator.device)
        seed = (self.cfg.seed * 1_000_003 + micro_step) * 4099 + self.accelerator.process_index
        return g.manual_seed(seed % (2**63))

    def loss(self, encoded: list[dict], idx: list[int], split: str, micro_step: int):
        adapter, accel = self.adapter, self.accelerator
        batch = _to(adapter.collate([encoded[i] for i in idx]), accel.device)
        aux = adapter.prepare(batch, self._generator(micro_step))
        with accel.autocast():
            policy = adapter.score(batch, aux)
            if not self.objective.needs_reference:
                ref = None
            elif self.ref_cache is not None:
                ref = self.ref_cache[split][idx].to(accel.device).T.reshape(-1)  # [chosen; rejected]
            else:
                with torch.no_grad(), adapter.reference():
                    ref = adapter.score(batch, aux).detach()
        return self.objective(policy, ref, batch, aux)

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        tcfg, accel = self.cfg.train, self.accelerator
        n = len(self.train_encoded)
        self.adapter.module.train()
        bar = tqdm(total=tcfg.max_steps, initial=self.step, desc="train", disable=not (self.main and tcfg.progress))
        if self.step == 0 and tcfg.eval_every:
            self.evaluate()  # the step-0 baseline of every eval curve
        sums: dict[str, float] = {}
        count, t0 = 0, time.perf_counter()
        while self.step < tcfg.max_steps:
            idx = batch_indices(n, tcfg.batch_size, accel.num_processes, accel.process_index, self.cfg.seed, self.micro_step)
            with accel.accumulate(self.adapter.module):
                losses, metrics = self.loss(self.train_encoded, idx, "train", self.micro_step)
                loss = losses.mean()
                accel.backward(loss)
                grad_norm = None
                if accel.sync_gradients and tcfg.max_grad_norm is not None:
                    grad_norm = accel.clip_grad_norm_(self.params, tcfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.micro_step += 1
            for k, v in {"loss": losses.detach(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v.float().mean())
            count += 1
            if not accel.sync_gradients:
                continue
            self.scheduler.step()
            self.step += 1
            values = {k: v / count for k, v in sums.items()}
            values = {k: float(v) for k, v in zip(values, accel.reduce(torch.tensor(list(values.values()), device=accel.device), "mean"))}
            values["lr"] = self.scheduler.get_last_lr()[0]
            values["step_time"] = (time.perf_counter() - t0) / count * tcfg.gradient_accumulation_steps
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            values["epoch"] = self.micro_step * tcfg.batch_size * accel.num_processes / n
            if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps:
                self._log(values, "train")
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values.get('rewards/accuracy', float('nan')):.2f}")
            if tcfg.eval_every and self.step % tcfg.eval_every == 0 and self.step < tcfg.max_steps:
                self.evaluate()
            if tcfg.save_every and self.step % tcfg.save_every == 0 and self.step < tcfg.max_steps:
                self.save_checkpoint()
            sums, count, t0 = {}, 0, time.perf_counter()  # step_time excludes logging, eval, checkpoints
        bar.close()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Mean loss and reward metrics over the held-out pairs (sharded over ranks)."""
        if not self.eval_encoded:
            return None
        accel, adapter = self.accelerator, self.adapter
        adapter.module.eval()
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        mine = list(range(accel.process_index, len(self.eval_encoded), accel.num_processes))
        sums: dict[str, torch.Tensor] = {}
        # Ranks may run different numbers of batches: forward through the unwrapped model so that
        # no collective (DDP buffer broadcast) waits on a rank that has finished.
        with scoring_with(adapter, accel.unwrap_model(adapter.module)):
            for i in range(0, len(mine), bs):
                idx = mine[i: i + bs]
                losses, metrics = self.loss(self.eval_encoded, idx, "eval", -1 - i)
                for k, v in {"loss": losses, **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v.float().sum()
        keys = ["loss", *sorted(k for k in sums if k != "loss")] if sums else ["loss"]
        local = torch.tensor([float(sums.get(k, 0.0)) for k in keys] + [len(mine)], device=accel.device)
        total = accel.reduce(local, reduction="sum")
        values = {k: float(total[i] / total[-1]) for i, k in enumerate(keys)}
        self._log(values, "eval")
        adapter.module.train()
        return values

    def summarize(self, values: dict[str, float]) -> dict[str, float]:
        """Derived metrics from the averaged per-example ones (recipes may add theirs)."""
        return values

    def _log(self, values: dict[str, float], split: str) -> None:
        values.update(self.summarize(values))
        log_values(self, values, split)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        accel = self.accelerator
        tmp, final = ckpt.start_checkpoint(accel, self.ckpt_root, self.step)
        if self.sharded:
            accel.save_state(str(tmp / "engine"))
        accel.wait_for_everyone()
        if self.main:
            ckpt.write_checkpoint(
                tmp,
                trainable=None if self.sharded else self.adapter.trainable_state_dict(),
                optimizer=None if self.sharded else self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                state={"step": self.step, "micro_step": self.micro_step, "seed": self.cfg.seed},
            )
            ckpt.commit(tmp, final, keep_last=self.cfg.train.keep_last)
        accel.wait_for_everyone()
        return final

    def _load_checkpoint(self, path: Path) -> None:
        data = ckpt.read_checkpoint(path, self.accelerator.process_index)
        if self.sharded:
            self.accelerator.load_state(str(path / "engine"))
        else:
            self.adapter.load_trainable_state_dict(data["trainable"])
            self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if data["rng"] is not None:
            ckpt.set_rng_state(data["rng"])
        self.step, self.micro_step = data["state"]["step"], data["state"]["micro_step"]
        if self.main:
            print(f"[mmalign] resumed from {path} (step {self.step})")

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        accel = self.accelerator
        if self.step > 0 and not ckpt.checkpoint_dir(self.ckpt_root, self.step).exists():
            self.save_checkpoint()
        # Gathers sharded weights (all ranks must call it); a no-op view on one device or DDP.
        state = accel.get_state_dict(self.adapter.module) if self.sharded else None
        if self.main:
            final = self.out / "final"
            self.adapter.model.eval()
            self.adapter.save_pretrained(str(final), state_dict=state)
            save_config(self.cfg, final / "mmalign_config.yaml")
            if self.cfg.train.plot:
                plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png", self.PLOT_KEYS)
        accel.wait_for_everyone()
        accel.end_training()

    def run(self) -> dict[str, float] | None:
        self.setup()
        self.train()
        result = self.evaluate()
        self.cleanup()
        if self.cfg.eval.world and self.main:  # the gym's ground-truth comparison with the base
            from mmalign.gym.run import run_eval, summary_line

            self.world_eval = run_eval(self.cfg)
            print(f"[mmalign] {self.cfg.eval.world}: {summary_line(self.world_eval)}")
        return result


def start_run(cfg: RunConfig, ckpt_root: Path, *, gradient_accumulation_steps: int = 1):
    """What every training recipe does first: refuse to overwrite checkpoints unless resuming, build
    the ``Accelerator`` from the ``accelerate:`` section, seed. Returns ``(accelerator, checkpoint to
    resume from or None)``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = cfg.train.resume
    resume_from = ckpt.latest_checkpoint(ckpt_root) if resume else None
    if not resume and ckpt.list_checkpoints(ckpt_root):
        raise FileExistsError(
            f"{ckpt_root} already holds checkpoints; pass train.resume=true (or --resume) to continue, "
            "or choose another output_dir"
        )
    # accelerate only sets up multi-process CPU training (gloo) when told cpu=True.
    cpu_ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    acfg = cfg.accelerate
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=acfg.mixed_precision,
        cpu=acfg.cpu or cpu_ranks,
        log_with=acfg.log_with or None,
        project_dir=str(out),
    )
    set_seed(cfg.seed)
    return accelerator, resume_from


def log_values(trainer, values: dict, split: str) -> None:
    """One metrics row: ``metrics.jsonl`` on the main process, and the configured trackers."""
    if trainer.main:
        trainer.metrics.write(trainer.step, split, values)
    if trainer.cfg.accelerate.log_with:
        trainer.accelerator.log({f"{split}/{k}": v for k, v in values.items()}, step=trainer.step)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    """Flatten a nested config for trackers (TensorBoard hparams take scalars only)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v if v is not None else "null"
        else:
            out[key] = str(v)
    return out

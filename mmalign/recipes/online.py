"""Recipe ``online`` (alias ``dragon``): rounds of on-policy generation, scoring, selection and update.

DRAGON (../shared/REFERENCES.md) for any modality; with a causal LM, an instance reward and
best-vs-worst pairing it is online iterative DPO (RLHF Workflow). One round::

    samples = policy.sample(prompts, seeds)               # the in-training model, per-sample seeds
    rewards = reward(samples, prompts)                    # [N, D]; any registered reward: instance,
                                                          # exemplar (instance-to-distribution) or
                                                          # set-level credit (distribution-to-distribution)
    pairs = select_pairs(weighted_sum(rewards), ...)      # positives / negatives (quantile or threshold)
    for step in range(steps_per_round):                   # the offline step, on this round's pairs
        aux = adapter.prepare(batch, generator)
        ref = reference_score(batch, aux)                 # base, or the policy of the last refresh
        loss = objective(adapter.score(batch, aux), ref, batch, aux)   # dpo/flow_dpo/... or kto

Positives and negatives are coupled by prompt into the adapters' ``[first; second]`` layout: for
DPO-family objectives a couple is a preference pair; for KTO (unpaired) it only batches one
desirable and one undesirable item of a prompt together -- each item's loss is independent.
Flow/diffusion samples are re-encoded by the pipeline's own VAE (exact for the gym's audio world).

Per-round metrics (split ``round`` in ``metrics.jsonl``, plotted to ``rounds.png``): mean reward per
dimension, set FAD of the samples to the reward's exemplars (when it has any), mean per-prompt Vendi,
pair count and reward gap. The last row (``final: 1``) re-samples round 0's prompts and seeds with the
trained policy: a before/after comparison on shared noise. A checkpoint is written atomically after
every round (``checkpoints/step-<round>``, safetensors) and ``--resume`` continues after the last one.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mmalign import registry
from mmalign.config import RunConfig, save_config
from mmalign.optim import build_scheduler
from mmalign.recipes.offline_preference import _flat, _to, batch_indices, log_values, start_run
from mmalign.rewards.base import weighted_sum
from mmalign.utils import checkpoint as ckpt
from mmalign.utils.metrics import MetricsFile, plot_metrics, read_metrics

PLOT_KEYS = ("loss", "rewards/margin")


@dataclass
class OnlineTrainConfig:
    """The ``train:`` section of ``online``."""

    rounds: int = field(default=4, metadata={"help": "Generate-score-select-update rounds."})
    prompts_per_round: int = field(default=32, metadata={"help": "Prompts sampled per round (0 = all)."})
    samples_per_prompt: int = field(default=4, metadata={"help": "On-policy samples per prompt."})
    steps_per_round: int = field(default=20, metadata={"help": "Optimizer steps on each round's pairs."})
    batch_size: int = field(default=8, metadata={"help": "Pairs (couples) per optimizer step."})
    selection: Literal["quantile", "threshold"] = "quantile"
    scope: Literal["prompt", "round"] = field(
        default="prompt", metadata={"help": "Quantiles within each prompt's samples, or over the whole round."})
    positive_quantile: float = field(default=0.25, metadata={"help": "Top share of samples that are positives."})
    negative_quantile: float = field(default=0.25, metadata={"help": "Bottom share that are negatives."})
    positive_threshold: float | None = field(default=None, metadata={"help": "selection=threshold: reward >= this."})
    negative_threshold: float | None = field(default=None, metadata={"help": "selection=threshold: reward <= this."})
    pairing: Literal["best_vs_worst", "all"] = field(
        default="best_vs_worst", metadata={"help": "Per prompt: best positive vs worst negative, or all of them zipped."})
    min_gap: float = field(default=0.0, metadata={"help": "Drop couples whose reward gap is <= this."})
    ref_refresh_every: int = field(
        default=0, metadata={"help": "Reference := current policy every K rounds; 0 = the base, fixed."})
    dim_weights: dict[str, float] | None = field(default=None, metadata={"help": "Weights of the reward's dims."})
    sample_kwargs: dict | None = field(default=None, metadata={"help": "Sampling arguments (default: the data's)."})
    sample_batch_size: int = 64
    max_grad_norm: float | None = 1.0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "constant"
    warmup_steps: int = 0
    keep_last: int | None = 2
    resume: bool = False
    plot: bool = True
    progress: bool = True


# --------------------------------------------------------------------------- selection (pure)


def select_pairs(rewards: torch.Tensor, *, selection: str = "quantile", scope: str = "prompt",
                 positive_quantile: float = 0.25, negative_quantile: float = 0.25,
                 positive_threshold: float | None = None, negative_threshold: float | None = None,
                 pairing: str = "best_vs_worst", min_gap: float = 0.0) -> list[tuple[int, int, int]]:
    """Couples ``(prompt, positive, negative)`` (sample indices within the prompt's group).

    Example (worked by hand): rewards ``[[0.1, 0.9, 0.5, 0.3]]`` with the default top/bottom quarter
    per prompt → positive 1 (0.9), negative 0 (0.1) → ``[(0, 1, 0)]``.

    Args:
        rewards: ``[P, K]`` total rewards of K samples for each of P prompts.
        selection: ``quantile`` (top/bottom shares) or ``threshold`` (absolute reward cut-offs).
        scope: quantiles within each prompt (``prompt``; at least one each) or over the round (``round``).
        pairing: ``best_vs_worst`` (one couple per prompt) or ``all`` (positives best-first zipped
            with negatives worst-first).
        min_gap: couples whose reward gap is not above this are dropped.
    """
    P, K = rewards.shape
    r = rewards.double()
    if selection == "threshold":
        if positive_threshold is None or negative_threshold is None:
            raise ValueError("selection=threshold needs positive_threshold and negative_threshold")
        pos_mask, neg_mask = r >= positive_threshold, r <= negative_threshold
    elif scope == "round":
        hi = torch.quantile(r.flatten(), 1 - positive_quantile)
        lo = torch.quantile(r.flatten(), negative_quantile)
        pos_mask, neg_mask = r >= hi, r <= lo
    else:
        n_pos, n_neg = max(1, round(K * positive_quantile)), max(1, round(K * negative_quantile))
        if n_pos + n_neg > K:
            raise ValueError(f"{n_pos} positives + {n_neg} negatives exceed {K} samples per prompt")
        order = torch.argsort(r, dim=1, descending=True, stable=True)
        pos_mask = torch.zeros_like(r, dtype=torch.bool).scatter_(1, order[:, :n_pos], True)
        neg_mask = torch.zeros_like(r, dtype=torch.bool).scatter_(1, order[:, K - n_neg:], True)
    out = []
    for p in range(P):
        pos = sorted(torch.nonzero(pos_mask[p] & ~neg_mask[p]).flatten().tolist(), key=lambda k: -r[p, k])
        neg = sorted(torch.nonzero(neg_mask[p] & ~pos_mask[p]).flatten().tolist(), key=lambda k: r[p, k])
        couples = [(pos[0], neg[0])] if (pairing == "best_vs_worst" and pos and neg) else list(zip(pos, neg))
        out += [(p, a, b) for a, b in couples if r[p, a] - r[p, b] > min_gap]
    return out


# --------------------------------------------------------------------------- prompts


@dataclass
class PromptSource:
    prompts: list[str]
    world: str | None
    sample_kwargs: dict

    @property
    def train(self) -> list[str]:  # what `mmalign validate` counts
        return self.prompts

    @property
    def eval(self) -> list[str]:
        return []


@registry.register("data", "prompts", runtime_args=("seed",))
def prompt_source(world: str | None = None, prompts_file: str | None = None, prompts: list[str] | None = None,
                  contains: list[str] | None = None, num_prompts: int | None = None, seed: int = 0) -> PromptSource:
    """Prompts for on-policy generation: a gym world's training prompts, a file, or a list.

    Args:
        world: gym world whose ``train`` prompts (and sampling arguments) are used.
        prompts_file: one prompt per line.
        prompts: inline prompts.
        contains: keep only prompts containing every one of these strings (e.g. an exemplar set's style).
        num_prompts: keep this many (default: all).
        seed: from the run.
    """
    if sum(x is not None for x in (world, prompts_file, prompts)) != 1:
        raise ValueError("data: give exactly one of world, prompts_file, prompts")
    kwargs: dict = {}
    if world is not None:
        from mmalign.gym.base import get_world

        w = get_world(world)
        items, kwargs = w.prompts("train", None, seed), dict(w.sample_kwargs)
    elif prompts_file is not None:
        items = [line.strip() for line in Path(prompts_file).read_text().splitlines() if line.strip()]
    else:
        items = list(prompts)
    items = [p for p in items if all(c in p for c in (contains or []))][:num_prompts]
    if not items:
        raise ValueError("data: no prompts")
    return PromptSource(items, world, kwargs)


# --------------------------------------------------------------------------- helpers


@contextmanager
def swapped_weights(adapter, state: dict[str, torch.Tensor]):
    """Within this context the adapter's trainable weights are ``state`` (a refreshed reference)."""
    saved = {k: v.clone() for k, v in adapter.trainable_state_dict().items()}
    adapter.load_trainable_state_dict(state)
    try:
        yield
    finally:
        adapter.load_trainable_state_dict(saved)


def exemplar_stats(reward):
    """``(embedder, ReferenceStats)`` of the first exemplar-based part of ``reward``, or ``None``."""
    from mmalign.rewards.frechet import ReferenceStats

    for part in [reward, *getattr(reward, "parts", {}).values()]:
        if getattr(part, "exemplars", None) is not None:
            return part.embedder, ReferenceStats.from_feats(part.exemplars)
        if getattr(part, "stats", None) is not None and hasattr(part, "embedder"):
            return part.embedder, part.stats
    return None


def plot_rounds(path: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(path) if r.get("split") == "round" and not r.get("final")]
    keys = [k for k in rows[0] if k.startswith("reward/") or k in ("fad_exemplars", "vendi", "loss")] if rows else []
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot(*zip(*pts), "o-", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- recipe


@registry.register("recipe", "online")
class Online:
    """DRAGON / online iterative DPO: on-policy samples, any reward, positive/negative sets, DPO or KTO updates."""

    TrainConfig = OnlineTrainConfig
    sections = {"adapter": "required", "objective": "required", "reward": "required", "data": "required",
                "optim": "required"}

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, tcfg = self.cfg, self.cfg.train
        self.ckpt_root = self.out / "checkpoints"
        self.accelerator, resume_from = start_run(cfg, self.ckpt_root)
        accel = self.accelerator
        self.main = accel.is_main_process
        self.source: PromptSource = registry.build("data", cfg.data, seed=cfg.seed)
        self.objective = registry.build("objective", cfg.objective)
        self.paired = getattr(self.objective, "paired", True)
        self.adapter = registry.build("adapter", cfg.adapter, reference_copy=False)  # the reference: LoRA off or swapped weights
        self.text = cfg.adapter["name"] == "causal_lm"
        self.reward = registry.build("reward", cfg.reward).to(accel.device)
        weighted_sum(torch.zeros(1, len(self.reward.dims)), self.reward.dims, tcfg.dim_weights)  # bad names fail now
        self.exemplars = exemplar_stats(self.reward)
        self.world = None
        if self.source.world:
            from mmalign.gym.base import get_world

            self.world = get_world(self.source.world)
        self.sample_kwargs = {**self.source.sample_kwargs, **(tcfg.sample_kwargs or {})}
        if self.text:
            self.sample_kwargs = {"max_new_tokens": 32, "do_sample": True, **self.sample_kwargs}
            self.sample_rate = None
        else:
            self.sample_rate = getattr(self.adapter.family, "sample_rate", None)

        params = [p for p in self.adapter.model.parameters() if p.requires_grad]
        optimizer = registry.build("optim", cfg.optim, params=params)
        total = tcfg.rounds * tcfg.steps_per_round
        self.scheduler = build_scheduler(optimizer, tcfg.lr_scheduler, warmup_steps=tcfg.warmup_steps, total_steps=total)
        self.adapter.module, self.optimizer = accel.prepare(self.adapter.module, optimizer)
        self.params = params
        self.round, self.step, self.ref_state = 0, 0, None
        if not self.adapter.uses_lora:  # full fine-tuning: the reference is a snapshot of the weights
            self.ref_state = {k: v.clone() for k, v in self.adapter.trainable_state_dict().items()}
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self.metrics = MetricsFile(self.out / "metrics.jsonl", resume_step=self.step if tcfg.resume else None) if self.main else None
        if self.main and tcfg.resume and self.metrics.path.is_file():  # a finished run's before/after row is redone
            import json

            lines = self.metrics.path.read_text().splitlines()
            self.metrics.path.write_text("".join(f"{ln}\n" for ln in lines if not json.loads(ln).get("final")))
        if self.main:
            save_config(cfg, self.out / "config.yaml")
        if cfg.accelerate.log_with:
            accel.init_trackers(cfg.accelerate.project_name, config=_flat(cfg.to_dict()))

    # ------------------------------------------------------------------ generation
    def round_prompts(self, r: int) -> list[str]:
        """Round ``r``'s prompts: consecutive slices of seeded shuffles of the pool (one shuffle per pass)."""
        pool, n = self.source.prompts, self.cfg.train.prompts_per_round or len(self.source.prompts)
        order: list[str] = []
        for epoch in range(math.ceil((r + 1) * n / len(pool))):
            perm = pool[:]
            random.Random(self.cfg.seed * 7919 + epoch).shuffle(perm)
            order += perm
        return order[r * n: (r + 1) * n]

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]):
        """Samples of the *current* policy, one per (prompt, seed)."""
        model = self.accelerator.unwrap_model(self.adapter.module)
        model.eval()
        try:
            if self.text:
                return self._generate_text(model, prompts, seeds)
            return self._generate_media(prompts, seeds)
        finally:
            model.train()

    def _generate_text(self, model, prompts, seeds) -> list[str]:
        tok, device = self.adapter.tokenizer, self.accelerator.device
        out, k = [], self.cfg.train.samples_per_prompt
        for i in range(0, len(prompts), k):  # one prompt's samples together: no padding needed
            group = prompts[i: i + k]
            torch.manual_seed(seeds[i])
            ids = tok(group, return_tensors="pt").to(device)
            gen = model.generate(**ids, pad_token_id=tok.pad_token_id, **self.sample_kwargs)
            out += tok.batch_decode(gen[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    def _generate_media(self, prompts, seeds) -> torch.Tensor:
        pipe, device = self.adapter.pipeline(), self.accelerator.device
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        modality, bs, chunks = self.adapter.family.modality, self.cfg.train.sample_batch_size, []
        for i in range(0, len(prompts), bs):
            gens = [torch.Generator(device).manual_seed(s) for s in seeds[i: i + bs]]
            res = pipe(prompts[i: i + bs], generator=gens, output_type="np" if modality == "audio" else "pt",
                       **self.sample_kwargs)
            if modality == "image":
                chunks.append(res.images.float().cpu() * 2 - 1)
            elif modality == "video":
                chunks.append(res.frames.float().cpu().permute(0, 2, 1, 3, 4) * 2 - 1)
            else:
                audio = torch.as_tensor(res.audios).float().cpu()
                chunks.append(audio if audio.dim() == 3 else audio[:, None])
        return torch.cat(chunks)

    def rollout(self, r: int, prompts: list[str] | None = None):
        """Sample ``samples_per_prompt`` per prompt from the current policy and score them."""
        k = self.cfg.train.samples_per_prompt
        prompts = prompts if prompts is not None else self.round_prompts(r)
        flat = [p for p in prompts for _ in range(k)]
        seeds = [(self.cfg.seed * 1_000_003 + r * 100_003 + i) % (2**63) for i in range(len(flat))]
        samples = self.generate(flat, seeds)
        with torch.no_grad():
            rewards = self.reward(samples, flat, sample_rate=self.sample_rate).float().cpu()
        return prompts, flat, samples, rewards

    @torch.no_grad()
    def round_metrics(self, samples, rewards: torch.Tensor, groups: int) -> dict[str, float]:
        tcfg = self.cfg.train
        values = {f"reward/{d}": float(rewards[:, i].mean()) for i, d in enumerate(self.reward.dims)}
        values["reward/total"] = float(weighted_sum(rewards, self.reward.dims, tcfg.dim_weights).mean())
        if self.exemplars is not None:
            from mmalign.rewards.frechet import per_sample_fad

            embedder, stats = self.exemplars
            feats = embedder.embed(samples, sample_rate=self.sample_rate).double().cpu()
            values["fad_exemplars"] = float(per_sample_fad(feats, stats))  # the whole set against the exemplars
        feats = None
        if self.world is not None:
            feats = self.world.features(samples).float().cpu()
        elif hasattr(self.reward, "embedder"):
            feats = self.reward.embedder.embed(samples, sample_rate=self.sample_rate).float().cpu()
        if feats is not None:
            from mmalign.gym.evaluate import mean_vendi

            values["vendi"] = mean_vendi(feats, [tcfg.samples_per_prompt] * groups)
        return values

    # ------------------------------------------------------------------ batches
    def build_round_data(self, prompts, flat, samples, couples) -> None:
        """Hold this round's couples in the form the adapter scores (tokens, or VAE latents + prompt encodings)."""
        k = self.cfg.train.samples_per_prompt
        idx_pos = [p * k + a for p, a, _ in couples]
        idx_neg = [p * k + b for p, _, b in couples]
        if self.text:
            from mmalign.data.pairs import PreferencePair

            self.records = [PreferencePair(prompt=prompts[p], chosen=samples[i], rejected=samples[j])
                            for (p, _, _), i, j in zip(couples, idx_pos, idx_neg)]
            self.encoded = [self.adapter.encode(rec) for rec in self.records]
            return
        device, lat_pos, lat_neg, conds = self.accelerator.device, [], [], []
        for s in range(0, len(couples), self.cfg.train.sample_batch_size):
            ip, ineg = idx_pos[s: s + self.cfg.train.sample_batch_size], idx_neg[s: s + self.cfg.train.sample_batch_size]
            batch = {"media": torch.cat([samples[ip], samples[ineg]]).to(device), "prompts": [flat[i] for i in ip]}
            enc = self.adapter.encode_batch(batch)
            lat_pos.append(enc["latents"][: len(ip)])
            lat_neg.append(enc["latents"][len(ip):])
            conds.append(enc["cond"])
        self.latents = (torch.cat(lat_pos), torch.cat(lat_neg))
        self.cond = {key: torch.cat([c[key] for c in conds]) if isinstance(conds[0][key], torch.Tensor) else conds[0][key]
                     for key in conds[0]}

    def batch(self, idx: list[int]) -> tuple[dict, dict | None]:
        """The couples ``idx`` laid out ``[positives; negatives]``; for text KTO also the mismatched batch."""
        device = self.accelerator.device
        if self.text:
            batch = _to(self.adapter.collate([self.encoded[i] for i in idx]), device)
            mismatched = None
            if not self.paired and len(idx) > 1:  # KTO's z0: prompt i with the completions of couple i+1
                from mmalign.data.pairs import PreferencePair

                recs = [PreferencePair(prompt=self.records[i].prompt, chosen=self.records[j].chosen,
                                       rejected=self.records[j].rejected) for i, j in zip(idx, idx[1:] + idx[:1])]
                mismatched = _to(self.adapter.collate([self.adapter.encode(rec) for rec in recs]), device)
            return batch, mismatched
        pos, neg = self.latents
        cond = {key: v[idx] if isinstance(v, torch.Tensor) else v for key, v in self.cond.items()}
        return {"latents": torch.cat([pos[idx], neg[idx]]), "cond": cond}, None

    def reference_score(self, batch: dict, aux: dict) -> torch.Tensor:
        with torch.no_grad(), self.accelerator.autocast():
            if self.ref_state is None:
                with self.adapter.reference():
                    return self.adapter.score(batch, aux).detach()
            with swapped_weights(self.adapter, self.ref_state):
                return self.adapter.score(batch, aux).detach()

    def _generator(self) -> torch.Generator:
        seed = (self.cfg.seed * 1_000_003 + self.step) * 4099 + self.accelerator.process_index
        return torch.Generator(device=self.accelerator.device).manual_seed(seed % (2**63))

    # ------------------------------------------------------------------ train
    def update(self, r: int, n_couples: int, bar) -> dict[str, float]:
        """``steps_per_round`` optimizer steps on this round's couples; returns the mean train metrics."""
        tcfg, accel, adapter = self.cfg.train, self.accelerator, self.adapter
        bs = min(tcfg.batch_size, n_couples // accel.num_processes)
        sums: dict[str, float] = {}
        adapter.module.train()
        for i in range(tcfg.steps_per_round):
            t0 = time.perf_counter()
            idx = batch_indices(n_couples, bs, accel.num_processes, accel.process_index, self.cfg.seed * 7 + r, i)
            batch, mismatched = self.batch(idx)
            aux = adapter.prepare(batch, self._generator())
            ref = self.reference_score(batch, aux) if self.objective.needs_reference else None
            if mismatched is not None:
                aux["kl_ref"] = self.reference_score(mismatched, {})
                with torch.no_grad(), accel.autocast():
                    aux["kl_policy"] = adapter.score(mismatched, {})
            with accel.autocast():
                policy = adapter.score(batch, aux)
            losses, metrics = self.objective(policy, ref, batch, aux)
            loss = losses.mean()
            accel.backward(loss)
            grad_norm = accel.clip_grad_norm_(self.params, tcfg.max_grad_norm) if tcfg.max_grad_norm else None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            values = {"loss": float(loss.detach()), **{k: float(v.float().nanmean()) for k, v in metrics.items()}}
            values.update(round=r, lr=self.scheduler.get_last_lr()[0], step_time=time.perf_counter() - t0)
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            self._log(values, "train")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(round=r, loss=f"{values['loss']:.4f}")
        return {k: v / max(1, tcfg.steps_per_round) for k, v in sums.items() if k in ("loss", "rewards/margin")}

    def train(self) -> None:
        tcfg = self.cfg.train
        bar = tqdm(total=tcfg.rounds * tcfg.steps_per_round, initial=self.step, desc="online",
                   disable=not (self.main and tcfg.progress))
        while self.round < tcfg.rounds:
            r = self.round
            if tcfg.ref_refresh_every and r > 0 and r % tcfg.ref_refresh_every == 0:
                self.ref_state = {k: v.clone() for k, v in self.adapter.trainable_state_dict().items()}
            prompts, flat, samples, rewards = self.rollout(r)
            total = weighted_sum(rewards, self.reward.dims, tcfg.dim_weights).view(len(prompts), tcfg.samples_per_prompt)
            couples = select_pairs(total, selection=tcfg.selection, scope=tcfg.scope,
                                   positive_quantile=tcfg.positive_quantile, negative_quantile=tcfg.negative_quantile,
                                   positive_threshold=tcfg.positive_threshold, negative_threshold=tcfg.negative_threshold,
                                   pairing=tcfg.pairing, min_gap=tcfg.min_gap)
            values = {"round": r, **self.round_metrics(samples, rewards, len(prompts)), "couples": len(couples),
                      "reward_gap": float(sum(total[p, a] - total[p, b] for p, a, b in couples) / max(1, len(couples)))}
            if len(couples) // self.accelerator.num_processes >= 1:
                self.build_round_data(prompts, flat, samples, couples)
                values.update(self.update(r, len(couples), bar))
            else:  # nothing to learn from this round (e.g. every sample tied): keep the step count aligned
                print(f"[mmalign] round {r}: no couples selected; skipping the update")
                self.step += tcfg.steps_per_round
                for _ in range(tcfg.steps_per_round):
                    self.scheduler.step()
                bar.update(tcfg.steps_per_round)
            self._log(values, "round")
            self.round += 1
            self.save_checkpoint()
        bar.close()

    def final_rollout(self) -> dict[str, float]:
        """Round 0's prompts and seeds sampled again by the trained policy: before/after on shared noise."""
        prompts, _, samples, rewards = self.rollout(0, self.round_prompts(0))
        values = {"round": self.cfg.train.rounds, "final": 1, **self.round_metrics(samples, rewards, len(prompts))}
        self._log(values, "round")
        return values

    def _log(self, values: dict, split: str) -> None:
        log_values(self, values, split)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        accel = self.accelerator
        tmp, final = ckpt.start_checkpoint(accel, self.ckpt_root, self.round)
        accel.wait_for_everyone()
        if self.main:
            if self.ref_state is not None:
                from safetensors.torch import save_file

                save_file({k: v.contiguous().cpu() for k, v in self.ref_state.items()}, str(tmp / "reference.safetensors"))
            ckpt.write_checkpoint(tmp, trainable=self.adapter.trainable_state_dict(), optimizer=self.optimizer.state_dict(),
                                  scheduler=self.scheduler.state_dict(),
                                  state={"round": self.round, "step": self.step, "seed": self.cfg.seed})
            ckpt.commit(tmp, final, keep_last=self.cfg.train.keep_last)
        accel.wait_for_everyone()
        return final

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        data = ckpt.read_checkpoint(path, self.accelerator.process_index)
        self.adapter.load_trainable_state_dict(data["trainable"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if data["rng"] is not None:
            ckpt.set_rng_state(data["rng"])
        self.round, self.step = data["state"]["round"], data["state"]["step"]
        ref = path / "reference.safetensors"
        self.ref_state = {k: v.to(self.accelerator.device) for k, v in load_file(str(ref)).items()} if ref.is_file() else None
        if self.main:
            print(f"[mmalign] resumed from {path} (after round {self.round}, step {self.step})")

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        accel = self.accelerator
        if self.main:
            final = self.out / "final"
            self.adapter.model.eval()
            self.adapter.save_pretrained(str(final))
            save_config(self.cfg, final / "mmalign_config.yaml")
            if self.cfg.train.plot:
                plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png", PLOT_KEYS)
                plot_rounds(self.out / "metrics.jsonl", self.out / "rounds.png")
        accel.wait_for_everyone()
        accel.end_training()

    def run(self) -> dict[str, float] | None:
        self.setup()
        self.train()
        result = self.final_rollout()
        self.cleanup()
        if self.cfg.eval.world and self.main:
            from mmalign.gym.run import run_eval, summary_line

            self.world_eval = run_eval(self.cfg)
            print(f"[mmalign] {self.cfg.eval.world}: {summary_line(self.world_eval)}")
        return {k: v for k, v in result.items() if k not in ("round", "final")}


registry.register("recipe", "dragon", description="Alias of 'online': DRAGON's on-policy rounds.")(Online)

"""Recipe ``latent_reward_model``: train a noisy-latent reward model (Flow-NRG) on preference pairs.

The loop is ``offline_preference``'s; the adapter is :class:`~mmalign.guidance.latent_reward.LatentRewardModel`
(both items of a pair noised with the same ε and t), the objective ``bradley_terry`` (BT or
BT-with-ties per dimension). It reads the same pair data as Flow-DPO. Besides the pairwise accuracy
per dimension, the held-out evaluation reports it per noise-level bucket (``accuracy/<dim>/t<lo>-<hi>``):
a latent reward model is only as useful for guidance as it is accurate at the t where it guides.
The artifact (``OUTPUT_DIR/final``): ``model.safetensors`` + ``latent_reward_model.json``, loaded by
``guidance.reward_model=OUTPUT_DIR/final`` at sampling time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from mmalign import registry
from mmalign.objectives.bradley_terry import pairwise_accuracy
from mmalign.recipes.offline_preference import OfflinePreference, TrainConfig, _to, scoring_with


@dataclass
class LatentRMTrainConfig(TrainConfig):
    """``offline_preference``'s ``train:`` section plus the noise-level buckets of the evaluation."""

    t_buckets: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
                                   metadata={"help": "Edges of the t buckets for held-out accuracy."})
    eval_noise_draws: int = field(default=4, metadata={"help": "Noise/t draws per held-out pair in the bucket report."})


@registry.register("recipe", "latent_reward_model")
class LatentRewardModelRecipe(OfflinePreference):
    """Noisy-latent reward model r(x_t, t, prompt) on preference pairs, BT / BT-with-ties per dimension."""

    TrainConfig = LatentRMTrainConfig
    PLOT_KEYS = ("loss", "accuracy/mean", "accuracy_with_ties/mean")

    def setup(self) -> None:
        if self.cfg.adapter["name"] != "latent_reward_model":
            raise registry.ConfigError("adapter.name: the latent_reward_model recipe trains the "
                                       "'latent_reward_model' adapter")
        super().setup()

    def summarize(self, values):
        return pairwise_accuracy(values)

    @torch.no_grad()
    def bucket_accuracy(self) -> dict[str, float]:
        """Held-out pairwise accuracy (non-tied pairs) per dimension and t bucket, several draws per pair."""
        adapter, tcfg = self.adapter, self.cfg.train
        encoded = self.eval_encoded or self.train_encoded
        edges = tcfg.t_buckets
        dims = adapter.dims
        correct = torch.zeros(len(edges) - 1, len(dims))
        count = torch.zeros(len(edges) - 1, len(dims))
        bs = tcfg.eval_batch_size or tcfg.batch_size
        with scoring_with(adapter, self.accelerator.unwrap_model(adapter.module)):
            adapter.module.eval()
            for draw in range(tcfg.eval_noise_draws):
                for i in range(0, len(encoded), bs):
                    batch = _to(adapter.collate(encoded[i: i + bs]), self.accelerator.device)
                    aux = adapter.prepare(batch, self._generator(-10_000 * (draw + 1) - i))
                    chosen, rejected = adapter.score(batch, aux).float().cpu().chunk(2)
                    t = aux["t"][: chosen.shape[0]].cpu()
                    labels = batch["labels"].cpu()
                    bucket = (torch.bucketize(t, torch.tensor(edges[1:-1]), right=True))
                    hit = (torch.sign(chosen - rejected) == labels).float()
                    nontie = (labels != 0).float()
                    for b in range(len(edges) - 1):
                        sel = bucket == b
                        correct[b] += (hit[sel] * nontie[sel]).sum(0)
                        count[b] += nontie[sel].sum(0)
        out = {}
        for b in range(len(edges) - 1):
            name = f"t{edges[b]:g}-{edges[b + 1]:g}"
            for j, d in enumerate(dims):
                out[f"accuracy/{d}/{name}"] = float(correct[b, j] / count[b, j]) if count[b, j] else float("nan")
        return out

    def cleanup(self) -> None:
        buckets = self.bucket_accuracy() if self.main else None
        super().cleanup()
        if self.main:
            (self.out / "final" / "accuracy_by_t.json").write_text(json.dumps(buckets, indent=2))
            self.metrics.write(self.step, "eval_t", buckets)
            print("[mmalign] held-out accuracy by t: " + ", ".join(f"{k.split('/', 1)[1]}={v:.3f}"
                                                                  for k, v in buckets.items()))

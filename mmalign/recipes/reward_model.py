"""Recipe ``reward_model``: train a multi-dimensional preference reward model (VideoReward-style).

The loop is ``offline_preference``'s (data order, accumulation, checkpoints, resume, eval); what
changes is the adapter (a reward model, ``score`` = ``[2B, D]`` rewards), the objective
(``bradley_terry``: BT or BT-with-ties per dimension), the reported metrics (pairwise accuracy per
dimension with and without ties, as VideoGen-RewardBench reports it) and the artifact: the model
is saved with the z-normalisation statistics of its scores on the held-out pairs (``znorm.json``).
"""

from __future__ import annotations

import json

import torch

from mmalign import registry
from mmalign.objectives.bradley_terry import pairwise_accuracy
from mmalign.recipes.offline_preference import OfflinePreference, _to, scoring_with
from mmalign.rewards.reward_model import ZNORM_FILE, znorm_stats


@registry.register("recipe", "reward_model")
class RewardModelRecipe(OfflinePreference):
    """Multi-dimensional BT / BT-with-ties reward model on preference pairs; saves z-norm statistics."""

    PLOT_KEYS = ("loss", "accuracy/mean", "accuracy_with_ties/mean")

    def summarize(self, values):
        return pairwise_accuracy(values)

    @torch.no_grad()
    def znorm(self) -> dict:
        """Statistics of the scores of every held-out item (training items if none are held out)."""
        adapter = self.adapter
        encoded = self.eval_encoded or self.train_encoded
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        scores = []
        adapter.module.eval()
        with scoring_with(adapter, self.accelerator.unwrap_model(adapter.module)), self.accelerator.autocast():
            for i in range(0, len(encoded), bs):
                batch = _to(adapter.collate(encoded[i: i + bs]), self.accelerator.device)
                scores.append(adapter.score(batch, adapter.prepare(batch, self._generator(-1 - i))).float().cpu())
        return znorm_stats(torch.cat(scores), adapter.dims)

    def cleanup(self) -> None:
        stats = self.znorm() if self.main else None
        super().cleanup()
        if self.main:
            (self.out / "final" / ZNORM_FILE).write_text(json.dumps(stats, indent=2))

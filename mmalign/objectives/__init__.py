"""Pure loss functions (tensors in, per-example losses out) and their registered wrappers."""

from mmalign.objectives.dpo import DPO, LOSS_TYPES, dpo_loss, preference_metrics

__all__ = ["DPO", "LOSS_TYPES", "dpo_loss", "preference_metrics"]

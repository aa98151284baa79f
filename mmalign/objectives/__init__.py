"""Pure loss functions (tensors in, per-example losses out) and their registered wrappers."""

from mmalign.objectives.dpo import DPO, LOSS_TYPES, DiffusionDPO, FlowDPO, beta_schedule_factor, dpo_loss, preference_metrics
from mmalign.objectives.rwr import RWR, SFT, combine_rewards, rwr_loss, rwr_weights

__all__ = [
    "DPO", "LOSS_TYPES", "DiffusionDPO", "FlowDPO", "RWR", "SFT", "beta_schedule_factor", "combine_rewards",
    "dpo_loss", "preference_metrics", "rwr_loss", "rwr_weights",
]

"""Pure loss functions (tensors in, per-example losses out) and their registered wrappers."""

from mmalign.objectives.bradley_terry import BradleyTerry, bt_loss, bt_ties_loss, pairwise_accuracy, rao_kupper_predict
from mmalign.objectives.dpo import DPO, LOSS_TYPES, DiffusionDPO, FlowDPO, beta_schedule_factor, dpo_loss, preference_metrics
from mmalign.objectives.kto import KTO, FlowKTO, kto_loss
from mmalign.objectives.rwr import RWR, SFT, rwr_loss, rwr_weights

__all__ = [
    "BradleyTerry", "bt_loss", "bt_ties_loss", "pairwise_accuracy", "rao_kupper_predict",
    "DPO", "LOSS_TYPES", "DiffusionDPO", "FlowDPO", "RWR", "SFT", "beta_schedule_factor",
    "dpo_loss", "preference_metrics", "KTO", "FlowKTO", "kto_loss", "rwr_loss", "rwr_weights",
]

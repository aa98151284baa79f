"""Reward-weighted regression on generator scores (Flow-RWR) and its baseline, SFT on the chosen items.

Both work on any adapter's scores: for a flow model ``-score`` is the flow-matching error
``||v_θ(x_t, t) − (ε − x₀)||²`` (mean over elements), for a causal LM the completion NLL.
"""

from __future__ import annotations

import torch

from mmalign.registry import register
from mmalign.rewards.base import weighted_sum


def rwr_weights(rewards: torch.Tensor, *, beta: float, clip: float | None = None) -> torch.Tensor:
    """Batch-normalised weights ``w ∝ exp(r/β)`` with mean 1, optionally clipped at ``clip``.

    ``w_i = N · softmax(r/β)_i``: a batch of equal rewards gives all-ones (plain flow matching);
    as β → 0 the weight concentrates on the best item. Clipping bounds one item's share of the
    gradient. Example: r = (0, ln 3), β = 1 → softmax (1/4, 3/4) → w = (0.5, 1.5).

    Args:
        rewards: ``[N]`` scalar rewards.
        beta: temperature (> 0).
        clip: maximum weight after normalisation; ``None`` = no clip.

    Returns:
        ``[N]`` detached float32 weights.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    w = torch.softmax(rewards.detach().float() / beta, dim=0) * rewards.numel()
    return w.clamp(max=clip) if clip is not None else w


def rwr_loss(scores: torch.Tensor, rewards: torch.Tensor, *, beta: float, clip: float | None = None) -> torch.Tensor:
    """Per-item reward-weighted losses ``w_i · (−score_i)`` ``[N]`` (their mean is the RWR objective)."""
    return rwr_weights(rewards, beta=beta, clip=clip).to(scores.device) * -scores.float()


@register("objective", "rwr")
class RWR:
    """Flow-RWR: reward-weighted flow matching, w ∝ exp(r/β) over the batch (reward_chosen/reward_rejected)."""

    needs_reference = False

    def __init__(self, beta: float = 1.0, clip: float | None = 10.0, dim_weights: dict[str, float] | None = None):
        """
        Args:
            beta: temperature of the weights; small β trusts the reward more.
            clip: maximum normalised weight (mean weight is 1); null disables it.
            dim_weights: with per-dimension rewards, the weight of each dimension (default: sum).
        """
        rwr_weights(torch.zeros(1), beta=beta, clip=clip)
        self.beta, self.clip, self.dim_weights = beta, clip, dim_weights

    def __call__(self, policy, ref=None, batch=None, aux=None):
        """``[2B]`` scores of chosen and rejected items, each weighted by its own reward."""
        if batch is None or batch.get("rewards") is None:
            raise ValueError("rwr needs rewards: give reward_chosen and reward_rejected in every record")
        rewards = weighted_sum(batch["rewards"].to(policy.device), batch.get("reward_dims", ()), self.dim_weights)
        weights = rwr_weights(rewards, beta=self.beta, clip=self.clip)
        losses = weights * -policy.float()
        return losses, {"rwr/weight_max": weights.max().expand(losses.shape), "reward/mean": rewards.float()}


@register("objective", "sft")
class SFT:
    """SFT on the chosen items only (flow matching / NLL): the baseline preference methods must beat."""

    needs_reference = False

    def __call__(self, policy, ref=None, batch=None, aux=None):
        chosen = policy.float().chunk(2)[0]
        num_tokens = (batch or {}).get("num_tokens")
        if num_tokens is not None:  # text: mean token NLL, as a language-model loss
            chosen = chosen / num_tokens.float().clamp(min=1).chunk(2)[0]
        return -chosen, {}

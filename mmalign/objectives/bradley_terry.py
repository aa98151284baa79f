"""Reward-model losses: Bradley–Terry and Bradley–Terry with ties (Rao–Kupper), per dimension.

VideoReward trains one score per dimension (VQ, MQ, TA) with the Rao–Kupper model (θ = 5):

    P(a ≻ b) = σ(Δ − log θ),   P(tie) = (θ² − 1) · σ(Δ − log θ) · σ(−Δ − log θ),   Δ = r_a − r_b.

With θ = 5 and Δ = 0: P(a ≻ b) = P(b ≻ a) = 1/6 and P(tie) = 24/36 = 2/3 (they sum to 1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from mmalign.registry import register

LABEL_IDS = {"chosen": 1, "rejected": -1, "tie": 0}


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0,
            center_coef: float = 0.0) -> torch.Tensor:
    """Per-example Bradley–Terry loss ``−log σ(r_c − r_r − m)`` (+ ``c·(r_c + r_r)²`` centering).

    Example: r_c = 1, r_r = 0, m = 0 → ``−log σ(1) = 0.31326``.

    Args:
        chosen: ``[B]`` (or ``[B, D]``) rewards of the preferred items.
        rejected: same shape, rewards of the other items.
        margin: required reward gap m (scalar or broadcastable tensor).
        center_coef: weight c of the centering term that keeps rewards near zero.

    Returns:
        float32 losses of the input shape.
    """
    chosen, rejected = chosen.float(), rejected.float()
    loss = -F.logsigmoid(chosen - rejected - margin)
    if center_coef:
        loss = loss + center_coef * (chosen + rejected) ** 2
    return loss


def bt_ties_loss(delta: torch.Tensor, tie: torch.Tensor, theta: float = 5.0) -> torch.Tensor:
    """Per-example Rao–Kupper negative log-likelihood.

    Non-tie (``delta`` = winner − loser): ``−log σ(Δ − log θ)``;
    tie: ``−log σ(Δ − log θ) − log σ(−Δ − log θ) − log(θ² − 1)``.
    Worked values at Δ = 0, θ = 5: non-tie ``log 6 = 1.79176``, tie ``log 1.5 = 0.40547``.

    Args:
        delta: ``[B]`` (or ``[B, D]``) reward differences.
        tie: bool tensor of the same shape, True where the pair is a tie.
        theta: Rao–Kupper tie parameter (> 1).
    """
    if theta <= 1:
        raise ValueError(f"theta must be > 1, got {theta}")
    delta = delta.float()
    log_theta = math.log(theta)
    win = -F.logsigmoid(delta - log_theta)
    tied = win - F.logsigmoid(-delta - log_theta) - math.log(theta**2 - 1)
    return torch.where(tie.bool(), tied, win)


def rao_kupper_predict(delta: torch.Tensor, theta: float = 5.0) -> torch.Tensor:
    """Most likely outcome under Rao–Kupper: 1 (first wins), −1 (second wins) or 0 (tie)."""
    log_theta = math.log(theta)
    p_win = torch.sigmoid(delta - log_theta)
    p_lose = torch.sigmoid(-delta - log_theta)
    p_tie = 1 - p_win - p_lose
    stacked = torch.stack([p_lose, p_tie, p_win], dim=-1)
    return stacked.argmax(-1) - 1


@register("objective", "bradley_terry")
class BradleyTerry:
    """Reward-model loss per dimension: Bradley-Terry, or BT-with-ties (Rao-Kupper, theta = 5)."""

    needs_reference = False

    def __init__(self, ties: Literal["rao_kupper", "skip"] = "rao_kupper", theta: float = 5.0,
                 margin: float = 0.0, center_coef: float = 0.0):
        """
        Args:
            ties: ``rao_kupper`` models ties (VideoReward); ``skip`` is plain BT, tied pairs ignored.
            theta: Rao–Kupper tie parameter.
            margin: BT margin (``skip`` mode).
            center_coef: BT centering weight (``skip`` mode).
        """
        bt_ties_loss(torch.zeros(1), torch.zeros(1), theta)
        self.ties, self.theta, self.margin, self.center_coef = ties, theta, margin, center_coef

    def __call__(self, policy: torch.Tensor, ref=None, batch: dict | None = None, aux=None):
        """``policy``: ``[2B, D]`` rewards ``[chosen; rejected]``; ``batch["labels"]``: ``[B, D]`` in
        {1: chosen better, −1: rejected better, 0: tie}; ``batch["reward_dims"]`` names the columns."""
        chosen, rejected = policy.float().chunk(2)
        labels = batch["labels"].to(policy.device)
        dims = batch.get("reward_dims") or tuple(f"dim{i}" for i in range(labels.shape[1]))
        delta = chosen - rejected
        tie = labels == 0
        winner_delta = torch.where(labels == -1, -delta, delta)
        if self.ties == "rao_kupper":
            per_dim = bt_ties_loss(winner_delta, tie, self.theta)
            weight = torch.ones_like(per_dim)
        else:
            per_dim = bt_loss(winner_delta, torch.zeros_like(winner_delta), self.margin, self.center_coef)
            weight = (~tie).float()
        losses = (per_dim * weight).sum(1) / weight.sum(1).clamp(min=1)
        with torch.no_grad():
            predicted = rao_kupper_predict(delta, self.theta)
            metrics = {}
            for i, d in enumerate(dims):
                nontie = (~tie[:, i]).float()
                metrics[f"correct/{d}"] = ((torch.sign(delta[:, i]) == labels[:, i]).float() * nontie)
                metrics[f"nontie/{d}"] = nontie
                metrics[f"correct_with_ties/{d}"] = (predicted[:, i] == labels[:, i]).float()
        return losses, metrics


def pairwise_accuracy(metrics: dict[str, float]) -> dict[str, float]:
    """From averaged ``correct/d``, ``nontie/d`` and ``correct_with_ties/d``: accuracy per dimension
    without ties (non-tied pairs only) and with ties (3-way), and their means over dimensions."""
    dims = [k.split("/", 1)[1] for k in metrics if k.startswith("nontie/")]
    out = {}
    for d in dims:
        out[f"accuracy/{d}"] = metrics[f"correct/{d}"] / metrics[f"nontie/{d}"] if metrics[f"nontie/{d}"] else float("nan")
        out[f"accuracy_with_ties/{d}"] = metrics[f"correct_with_ties/{d}"]
    if dims:
        out["accuracy/mean"] = sum(out[f"accuracy/{d}"] for d in dims) / len(dims)
        out["accuracy_with_ties/mean"] = sum(out[f"accuracy_with_ties/{d}"] for d in dims) / len(dims)
    return out

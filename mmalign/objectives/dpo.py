"""DPO-family pairwise preference losses as pure tensor functions.

The same function serves every modality: for a causal LM the scores are summed completion
log-probabilities, for a flow or diffusion model they are ``-||pred - target||^2`` at a noise and
timestep shared by the pair (Flow-DPO / Diffusion-DPO). Formulas follow ../shared/REFERENCES.md
and agree with TRL's ``DPOTrainer`` (tests/objectives/test_dpo.py checks both).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mmalign.registry import register

LossType = Literal["sigmoid", "robust", "ipo", "hinge"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "robust", "ipo", "hinge")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-example DPO-family losses.

    With the margin ``Δ = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)``:

    - ``sigmoid``: ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)`` (DPO; ε > 0 is conservative DPO, cDPO)
    - ``robust``:  ``[-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1 - 2ε)`` (unbiased under flip rate ε)
    - ``ipo``:     ``(Δ - 1/(2β))²``; pass per-token *averaged* log-probs for IPO proper
    - ``hinge``:   ``max(0, 1 - βΔ)`` (SLiC)

    Example (worked by hand): policy (−1, −3), ref (−2, −2) give Δ = 2; with β = 0.5 the sigmoid
    loss is ``-log σ(1) = 0.31326``, hinge ``max(0, 1 − 1) = 0`` and IPO ``(2 − 1)² = 1``.

    Args:
        policy_chosen: ``[B]`` scores of the chosen items under the policy.
        policy_rejected: ``[B]`` scores of the rejected items under the policy.
        ref_chosen: ``[B]`` scores of the chosen items under the reference.
        ref_rejected: ``[B]`` scores of the rejected items under the reference.
        beta: inverse temperature (β = 0.1 is usual for LMs, β ≈ 100–5000 for flow models).
        loss_type: one of ``sigmoid``, ``robust``, ``ipo``, ``hinge``.
        label_smoothing: assumed label-flip rate ε for ``sigmoid`` and ``robust``.

    Returns:
        ``[B]`` float32 losses.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to 'sigmoid' and 'robust' only, not {loss_type!r}")
    margin = (policy_chosen.float() - policy_rejected.float()) - (ref_chosen.float() - ref_rejected.float())
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * margin) - eps * F.logsigmoid(-beta * margin)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(beta * margin) + eps * F.logsigmoid(-beta * margin)) / (1 - 2 * eps)
    if loss_type == "ipo":
        return (margin - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * margin)
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


@torch.no_grad()
def preference_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Per-example implicit rewards ``β(log π − log π_ref)``, their margin and accuracy.

    Returns a dict of ``[B]`` tensors: ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margin`` and ``rewards/accuracy`` (1 where the chosen reward is strictly higher).
    """
    chosen = beta * (policy_chosen.float() - ref_chosen.float())
    rejected = beta * (policy_rejected.float() - ref_rejected.float())
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margin": chosen - rejected,
        "rewards/accuracy": (chosen > rejected).float(),
    }


def beta_schedule_factor(t: torch.Tensor, schedule: str) -> torch.Tensor:
    """Multiplier of β per example: 1 (``constant``) or ``(1 − t)²`` (``flow_quadratic``, t = noise level)."""
    if schedule == "constant":
        return torch.ones_like(t, dtype=torch.float32)
    if schedule == "flow_quadratic":
        return (1 - t.float()) ** 2
    raise ValueError(f"unknown beta_schedule {schedule!r}; valid: constant, flow_quadratic")


@register("objective", "dpo")
class DPO:
    """DPO family on paired scores: sigmoid (cDPO with label_smoothing), robust, IPO, hinge; optional RPO NLL."""

    needs_reference = True

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
    ):
        """
        Args:
            beta: inverse temperature of the implicit reward.
            loss_type: ``sigmoid``, ``robust``, ``ipo`` or ``hinge``.
            label_smoothing: label-flip rate ε for ``sigmoid`` (cDPO) and ``robust``.
            rpo_alpha: weight of the NLL of the chosen item (RPO); 0 disables it. For text the NLL
                is the mean over completion tokens; for flow models it is the denoising error.
        """
        # Check the arguments now, so a bad config fails before any model loads.
        dpo_loss(*torch.zeros(4, 1), beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
        if rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
        self.beta, self.loss_type, self.label_smoothing, self.rpo_alpha = beta, loss_type, label_smoothing, rpo_alpha
        self.beta_schedule = "constant"

    def __call__(
        self, policy: torch.Tensor, ref: torch.Tensor, batch: dict | None = None, aux: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Losses ``[B]`` and per-example metrics from ``[2B]`` scores laid out ``[chosen; rejected]``.

        ``batch["num_tokens"]`` (``[2B]``, text only) turns summed log-probs into per-token
        averages for IPO and for the RPO NLL, as TRL does. ``aux["t"]`` (``[2B]``, flow models)
        feeds the timestep-dependent β schedule.
        """
        num_tokens = (batch or {}).get("num_tokens")
        policy_chosen, policy_rejected = policy.float().chunk(2)
        ref_chosen, ref_rejected = ref.float().chunk(2)
        metrics = preference_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.beta)
        scores = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        if num_tokens is not None:
            n_chosen, n_rejected = num_tokens.float().clamp(min=1).chunk(2)
            averaged = (policy_chosen / n_chosen, policy_rejected / n_rejected, ref_chosen / n_chosen, ref_rejected / n_rejected)
        else:
            n_chosen, averaged = None, scores
        scores = averaged if self.loss_type == "ipo" else scores
        if self.beta_schedule != "constant":
            # β_t multiplies the margin; dpo_loss takes a scalar β, so fold the factor into the scores.
            factor = beta_schedule_factor(aux["t"].chunk(2)[0].to(policy.device), self.beta_schedule)
            scores = tuple(s * factor for s in scores)
        losses = dpo_loss(*scores, beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing)
        if self.rpo_alpha:
            nll = -policy_chosen / n_chosen if n_chosen is not None else -policy_chosen
            losses = losses + self.rpo_alpha * nll
            metrics["nll"] = nll.detach()
        return losses, metrics


@register("objective", "flow_dpo")
class FlowDPO(DPO):
    """Flow-DPO: DPO on -||v - (eps - x0)||^2 scores at shared noise and t; constant beta, opt-in beta(1-t)^2."""

    def __init__(
        self,
        beta: float = 100.0,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
        beta_schedule: Literal["constant", "flow_quadratic"] = "constant",
    ):
        """
        Args:
            beta: multiplies the margin of mean-squared-error scores (flow_grpo's SD3 configs use 100).
            beta_schedule: ``constant`` (the paper's choice) or ``flow_quadratic``: β_t = β(1 − t)²,
                derived from Diffusion-DPO; it over-weights high-noise steps and reward-hacked in the paper.
            loss_type, label_smoothing, rpo_alpha: as for ``dpo``.
        """
        super().__init__(beta, loss_type, label_smoothing, rpo_alpha)
        beta_schedule_factor(torch.zeros(1), beta_schedule)
        self.beta_schedule = beta_schedule


@register("objective", "diffusion_dpo")
class DiffusionDPO(DPO):
    """Diffusion-DPO for epsilon/v models: DPO on -||pred - target||^2 at shared noise and t."""

    def __init__(
        self,
        beta: float = 2500.0,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
    ):
        """
        Args:
            beta: multiplies the margin of per-example *mean* squared errors directly. The original
                Diffusion-DPO code writes ``-0.5 * beta`` with β = 5000; diffusers' training example
                drops the ½ with β = 2500. We follow diffusers: our β = 2500 is the paper's 5000.
            loss_type, label_smoothing, rpo_alpha: as for ``dpo``.
        """
        super().__init__(beta, loss_type, label_smoothing, rpo_alpha)

"""KTO: the unpaired (desirable / undesirable) surrogate, for text and for flow/diffusion models.

With the implicit reward ``r = score_policy − score_ref`` (``log πθ(y|x) − log πref(y|x)`` for a causal
LM; for a flow or diffusion model the Diffusion-KTO analogue ``‖ε_ref − target‖² − ‖ε_θ − target‖²``
at a noise and timestep shared by policy and reference, i.e. the adapter's score difference):

- desirable items:   ``λ_D · (1 − σ(β (r − z₀)))``
- undesirable items: ``λ_U · (1 − σ(β (z₀ − r)))``

``z₀`` is a detached, clamped ``≥ 0`` estimate of ``KL(πθ ‖ πref)``: for LMs from *mismatched* pairs
(prompt i scored with the completion of another example, as KTO and TRL do), which the recipe passes
as ``aux["kl_policy"]``/``aux["kl_ref"]``; for diffusion (Diffusion-KTO) and whenever those are absent,
the batch mean of ``r`` over every item. See ../shared/REFERENCES.md (KTO row).
"""

from __future__ import annotations

import torch

from mmalign.registry import register


def kto_loss(
    policy: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-item KTO losses.

    Example (worked by hand): policy (−1, −3), ref (−2, −2) give r = (1, −1); with z₀ = 0.5 and
    β = 1 the desirable first item loses ``1 − σ(0.5) = 0.37754`` and the undesirable second item
    ``1 − σ(0.5 − (−1)) = 1 − σ(1.5) = 0.18243``.

    Args:
        policy: ``[N]`` scores under the policy.
        ref: ``[N]`` scores under the reference.
        desirable: ``[N]`` bool, True for desirable (positive) items.
        kl: the reference point z₀ (scalar; detached and clamped at 0 here).
        beta: inverse temperature (0.1 for LMs; ~100 for flow models' mean-squared-error scores).
        desirable_weight, undesirable_weight: λ_D and λ_U.

    Returns:
        ``[N]`` float32 losses.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError("desirable_weight and undesirable_weight must be >= 0")
    z0 = torch.as_tensor(kl, dtype=torch.float32, device=policy.device).detach().clamp(min=0)
    r = policy.float() - ref.float()
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable.to(policy.device).bool(), good, bad)


@register("objective", "kto")
class KTO:
    """KTO (unpaired): desirable lambda_D(1 - sigma(beta(r - z0))), undesirable lambda_U(1 - sigma(beta(z0 - r)))."""

    needs_reference = True
    paired = False

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        """
        Args:
            beta: 0.1 for LMs (summed log-probs); for flow/diffusion scores (per-item *mean* squared
                errors, whose policy/reference gaps are ~1e-3) use β of the order of ``flow_dpo``'s
                (100) or ``diffusion_dpo``'s (2500) -- ``flow_kto`` sets 100.
            desirable_weight: λ_D. With unequal counts KTO suggests λ_D n_D / (λ_U n_U) in [1, 4/3].
            undesirable_weight: λ_U.
        """
        kto_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), 0.0, beta=beta,
                 desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
        self.beta, self.lambda_d, self.lambda_u = beta, desirable_weight, undesirable_weight

    def __call__(self, policy: torch.Tensor, ref: torch.Tensor, batch: dict | None = None, aux: dict | None = None):
        """Losses ``[N]`` from ``[N]`` scores. ``batch["desirable"]`` (``[N]`` bool) labels items; without it the
        layout is ``[desirable; undesirable]`` halves (the pair layout). ``aux["kl_policy"]``/``aux["kl_ref"]``:
        scores of mismatched pairs for z₀; else z₀ is the batch mean of ``policy − ref``."""
        batch, aux = batch or {}, aux or {}
        n = policy.shape[0]
        desirable = batch.get("desirable")
        if desirable is None:
            desirable = torch.arange(n, device=policy.device) < n // 2
        r = (policy.float() - ref.float()).detach()
        if "kl_policy" in aux and "kl_ref" in aux:
            kl = (aux["kl_policy"].float() - aux["kl_ref"].float()).mean().detach()
        else:
            kl = r.mean()
        losses = kto_loss(policy, ref, desirable, kl, beta=self.beta,
                          desirable_weight=self.lambda_d, undesirable_weight=self.lambda_u)
        d = desirable.bool()
        rewards = self.beta * r
        nan = torch.tensor(float("nan"), device=policy.device)
        metrics = {
            "kl": kl.clamp(min=0).expand(n),
            "rewards/chosen": (rewards[d].mean() if d.any() else nan).expand(n),
            "rewards/rejected": (rewards[~d].mean() if (~d).any() else nan).expand(n),
        }
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses, metrics


@register("objective", "flow_kto")
class FlowKTO(KTO):
    """Diffusion-KTO on flow/diffusion denoising scores (beta 100 suits mean-squared-error scores); z0 = batch mean."""

    def __init__(self, beta: float = 100.0, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        super().__init__(beta, desirable_weight, undesirable_weight)

"""A simulated annotator: labels pairs from ground-truth rewards with Bradley–Terry noise.

For a pair (a, b) and each dimension d with ground-truth gap ``Δ_d = r_d(a) − r_d(b)``:
``|Δ_d| < tie_threshold`` is a tie; otherwise a prefers with probability ``σ(Δ_d / temperature)``.
The overall verdict does the same on the weighted sum of the dimensions. Scalar ratings (for RWR)
are the weighted ground truth plus Gaussian noise of standard deviation ``temperature``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Annotator:
    """Bradley–Terry noise of ``temperature`` on ground-truth gaps; ties below ``tie_threshold``."""

    temperature: float = 0.05
    tie_threshold: float = 0.02
    dim_weights: dict[str, float] | None = None

    def __post_init__(self):
        if self.temperature <= 0 or self.tie_threshold < 0:
            raise ValueError(f"need temperature > 0 and tie_threshold >= 0, got {self.temperature}, {self.tie_threshold}")

    def total(self, rewards: torch.Tensor, dims: tuple[str, ...]) -> torch.Tensor:
        from mmalign.rewards.base import weighted_sum

        return weighted_sum(rewards, dims, self.dim_weights)

    def _decide(self, delta: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """1 (a preferred), −1 (b preferred) or 0 (tie), elementwise."""
        u = torch.rand(delta.shape, generator=generator)
        prefer_a = u < torch.sigmoid(delta.float() / self.temperature)
        out = torch.where(prefer_a, 1, -1)
        return torch.where(delta.abs() < self.tie_threshold, 0, out)

    def label(self, r_a: torch.Tensor, r_b: torch.Tensor, dims: tuple[str, ...],
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Verdicts for pairs: ``overall`` ``[N]`` and ``per_dim`` ``[N, D]``, each in {1, −1, 0}.

        Args:
            r_a, r_b: ``[N, D]`` ground-truth rewards of the two items of each pair.
        """
        per_dim = self._decide(r_a - r_b, generator)
        overall = self._decide(self.total(r_a, dims) - self.total(r_b, dims), generator)
        return overall, per_dim

    def rate(self, rewards: torch.Tensor, dims: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """``[N, D]`` noisy per-dimension ratings (ground truth + N(0, temperature²))."""
        return rewards.float() + self.temperature * torch.randn(rewards.shape, generator=generator)

    def expected_agreement(self, delta: torch.Tensor) -> torch.Tensor:
        """Probability that a non-tied verdict agrees with the sign of the ground-truth gap."""
        return torch.sigmoid(delta.abs().float() / self.temperature)

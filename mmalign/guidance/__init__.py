"""Inference-time steering of flow models: noisy-latent reward models, reward-gradient guidance, best-of-N.

- :mod:`~mmalign.guidance.latent_reward`: ``r_φ(x_t, t, prompt) -> [B, D]`` (Flow-NRG), trained by
  the ``latent_reward_model`` recipe from the same pairs as Flow-DPO;
- :mod:`~mmalign.guidance.guided`: the guided velocity ``ṽ = v − λ·t/(1−t)·∇r`` (Stable Audio's cosine
  v-prediction: ``ṽ = v − λ·tan θ·∇r``) applied inside a stock diffusers pipeline's scheduler step, and
  decoded-space rewards on x̂₀;
- :mod:`~mmalign.guidance.sampler`: the ``guidance:`` section at sampling time, best-of-N and its
  compute-matched N.
"""

from mmalign.guidance.guided import guidance_coefficient, guided_scheduler, guided_velocity
from mmalign.guidance.latent_reward import LatentRewardModel, LatentRewardNet, load_latent_reward_model
from mmalign.guidance.sampler import Guidance, best_of_n_indices, compute_matched_n
from mmalign.recipes import latent_reward_model as _recipe  # noqa: F401  (registers the recipe)

__all__ = ["Guidance", "LatentRewardModel", "LatentRewardNet", "best_of_n_indices", "compute_matched_n",
           "guidance_coefficient", "guided_scheduler", "guided_velocity", "load_latent_reward_model"]

"""Rewards and metrics shared by every modality (``reward:`` section); see :mod:`mmalign.rewards.base`.

Registered rewards: ``clip_score``, ``clap_score`` (embedding similarity to the prompt),
``reward_model`` (a trained multi-dimensional reward model), ``exemplar``, ``set_fad_credit``,
``vendi_credit`` (DRAGON's distributional rewards) and ``composite``. Metrics:
:func:`~mmalign.rewards.frechet.frechet_distance`, :func:`~mmalign.rewards.vendi.vendi_score`.
"""

from mmalign.rewards.base import Composite, Reward, weighted_sum
from mmalign.rewards.clap import CLAPScore
from mmalign.rewards.clip import CLIPScore
from mmalign.rewards.embedding_reward_model import EmbeddingRewardModel
from mmalign.rewards.exemplar import ExemplarReward, SetFADCredit, VendiCredit
from mmalign.rewards.frechet import ReferenceStats, fad_inf, frechet_distance, per_sample_fad
from mmalign.rewards.reward_model import LearnedReward, TextRewardModel
from mmalign.rewards.vendi import vendi_score
from mmalign.rewards.vlm_reward_model import VLMRewardModel, load_vlm_reward_model

__all__ = [
    "CLAPScore", "CLIPScore", "Composite", "EmbeddingRewardModel", "ExemplarReward", "LearnedReward", "ReferenceStats", "Reward",
    "SetFADCredit", "TextRewardModel", "VLMRewardModel", "VendiCredit", "fad_inf", "frechet_distance", "per_sample_fad",
    "load_vlm_reward_model", "vendi_score", "weighted_sum",
]

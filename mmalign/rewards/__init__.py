"""Rewards and metrics shared by every modality (``reward:`` section); see :mod:`mmalign.rewards.base`."""

from mmalign.rewards.base import Composite, Reward, weighted_sum
from mmalign.rewards.reward_model import LearnedReward, TextRewardModel

__all__ = ["Composite", "LearnedReward", "Reward", "TextRewardModel", "weighted_sum"]

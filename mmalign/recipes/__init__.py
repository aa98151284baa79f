"""Recipes: the training loops, written out (``setup -> train -> cleanup``)."""

from mmalign.recipes.offline_preference import OfflinePreference
from mmalign.recipes.online import Online
from mmalign.recipes.reward_model import RewardModelRecipe

__all__ = ["OfflinePreference", "Online", "RewardModelRecipe"]

"""Recipes: the training loops, written out (``setup -> train -> cleanup``)."""

from mmalign.recipes.offline_preference import OfflinePreference

__all__ = ["OfflinePreference"]

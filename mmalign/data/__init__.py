"""Preference data: loading and validation (media loaders join here per modality)."""

from mmalign.data.pairs import DataError, PreferenceData, PreferencePair, load_pairs, validate_record

__all__ = ["DataError", "PreferenceData", "PreferencePair", "load_pairs", "validate_record"]

"""The alignment gym: small worlds with known preferences, a simulated annotator, and evaluation."""

from mmalign.gym.annotator import Annotator
from mmalign.gym.base import WORLDS, World, get_world, register_world
from mmalign.gym.evaluate import compare, evaluate_world, win_rate
from mmalign.gym.generate import generate_pairs, generated_pairs
from mmalign.gym import arith, chords, digits, moving_digits  # noqa: F401,E402  (register the worlds)

__all__ = ["Annotator", "WORLDS", "World", "compare", "evaluate_world", "generate_pairs", "generated_pairs",
           "get_world", "register_world", "win_rate"]

"""mmalign: align generative models with feedback -- text, image, video and audio, one API.

Importing the package fills the registries (adapters, objectives, rewards, data, optimizers,
recipes) through the explicit imports below.
"""

__version__ = "0.1.0"

from mmalign import adapters, data, guidance, gym, objectives, optim, recipes, rewards  # noqa: F401  (registration)
from mmalign.config import ConfigError, load_config
from mmalign.data import DataError, load_pairs
from mmalign.objectives import dpo_loss, preference_metrics

__all__ = ["ConfigError", "DataError", "dpo_loss", "load_config", "load_pairs", "preference_metrics", "__version__"]

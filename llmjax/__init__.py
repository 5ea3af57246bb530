"""llmjax: a JAX/Flax research framework for scalable transformers.

The curated public API (the notebook entry points); everything else lives in the subpackages.
"""

from llmjax.data.pipeline import DataConfig
from llmjax.models.config import ModelConfig
from llmjax.models.interface import LanguageModel
from llmjax.sampling.loading import LoadedModel, load
from llmjax.sampling.sampler import Sampler
from llmjax.sharding.mesh import MeshConfig
from llmjax.training.config import TrainConfig
from llmjax.training.loop import train

__version__ = "0.1.0"

__all__ = [
    "DataConfig",
    "LanguageModel",
    "LoadedModel",
    "MeshConfig",
    "ModelConfig",
    "Sampler",
    "TrainConfig",
    "load",
    "train",
]

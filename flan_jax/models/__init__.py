"""T5 model configuration and Flax modules."""

from flan_jax.models.config import T5Config
from flan_jax.models.t5 import T5

__all__ = ["T5Config", "T5"]

"""flan-jax: Flan-style instruction finetuning of T5 in JAX."""

__version__ = "0.1.0"

"""Adafactor with a constant learning rate (optionally after a linear warmup): the Flan-T5 recipe."""

import gin
import optax

from flan_jax.errors import UserError


def learning_rate_schedule(learning_rate: float = 5e-4, warmup_steps: int = 0) -> optax.Schedule:
  constant = optax.constant_schedule(learning_rate)
  if not warmup_steps:
    return constant
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, constant], [warmup_steps])


@gin.configurable
def adafactor(learning_rate: float = 5e-4, warmup_steps: int = 0, decay_rate: float = 0.8,
              clipping_threshold: float = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
  """Optax Adafactor with t5x's defaults (factored second moments, no momentum, update clipping 1.0)."""
  if not learning_rate > 0 or warmup_steps < 0:
    raise UserError(f"LEARNING_RATE must be > 0 and warmup_steps >= 0, got {learning_rate} and {warmup_steps}")
  return optax.adafactor(
      learning_rate=learning_rate_schedule(learning_rate, warmup_steps), decay_rate=decay_rate,
      clipping_threshold=clipping_threshold, multiply_by_parameter_scale=multiply_by_parameter_scale,
      min_dim_size_to_factor=min_dim_size_to_factor)

"""Adafactor with a constant learning rate (optionally after a linear warmup): the Flan-T5 recipe.

A linear cooldown to zero over the last steps is optional: finetuning from a checkpoint keeps Flan's constant
rate, a model trained from scratch (the demo) answers exactly far more often when the rate falls to zero at the end.
"""

import gin
import optax

from flan_jax.errors import UserError


def learning_rate_schedule(learning_rate: float = 5e-4, warmup_steps: int = 0, cooldown_steps: int = 0,
                           total_steps: int | None = None) -> optax.Schedule:
  """Warmup from 0, constant, then (with cooldown_steps) linear to 0 at total_steps."""
  pieces, boundaries = [optax.constant_schedule(learning_rate)], []
  if warmup_steps:
    pieces.insert(0, optax.linear_schedule(0.0, learning_rate, warmup_steps))
    boundaries.append(warmup_steps)
  if cooldown_steps:
    pieces.append(optax.linear_schedule(learning_rate, 0.0, cooldown_steps))
    boundaries.append(total_steps - cooldown_steps)
  return optax.join_schedules(pieces, boundaries) if boundaries else pieces[0]


@gin.configurable
def adafactor(learning_rate: float = 5e-4, warmup_steps: int = 0, cooldown_fraction: float = 0.0,
              total_steps: int | None = None, decay_rate: float = 0.8,
              clipping_threshold: float = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
  """Optax Adafactor with t5x's defaults (factored second moments, no momentum, update clipping 1.0)."""
  if not learning_rate > 0 or warmup_steps < 0:
    raise UserError(f"LEARNING_RATE must be > 0 and warmup_steps >= 0, got {learning_rate} and {warmup_steps}")
  if cooldown_fraction and not (0 < cooldown_fraction <= 1 and total_steps is not None):
    raise UserError(f"adafactor.cooldown_fraction={cooldown_fraction} needs to be in (0, 1] and "
                    f"adafactor.total_steps (usually %TRAIN_STEPS) set, got {total_steps}")
  cooldown_steps = round(cooldown_fraction * total_steps) if cooldown_fraction else 0
  if warmup_steps + cooldown_steps > (total_steps or warmup_steps):
    raise UserError(f"warmup_steps={warmup_steps} and a cooldown of {cooldown_steps} do not fit in {total_steps} steps")
  schedule = learning_rate_schedule(learning_rate, warmup_steps, cooldown_steps, total_steps)
  return optax.adafactor(
      learning_rate=schedule, decay_rate=decay_rate,
      clipping_threshold=clipping_threshold, multiply_by_parameter_scale=multiply_by_parameter_scale,
      min_dim_size_to_factor=min_dim_size_to_factor)

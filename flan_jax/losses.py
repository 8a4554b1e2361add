"""Cross-entropy with t5x's z-loss, summed over weighted target tokens."""

import jax
import jax.numpy as jnp


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
  """(sum of weighted token losses, sum of weighted z-losses) in float32.

  z-loss (PaLM/t5x) pushes log Z = logsumexp(logits) towards 0 so logits stay bounded; it is added to the
  token loss with coefficient `z_loss`. Callers divide by their normaliser (tokens, or a fixed factor).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  token_loss = log_z - target_logit
  z = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  return jnp.sum((token_loss + z) * weights), jnp.sum(z * weights)

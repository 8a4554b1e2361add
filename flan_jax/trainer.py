"""Train state and the jitted, sharded train and eval steps.

The loss is cross-entropy plus t5x's z-loss, summed over target tokens and divided either by the number of
target tokens in the whole batch or by a fixed LOSS_NORMALIZING_FACTOR. Gradient accumulation splits the
batch into microbatches and sums their gradients before normalising, so it equals the full-batch step.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from flan_jax import lora, partitioning
from flan_jax.losses import cross_entropy
from flan_jax.models import T5, T5Config
from flan_jax.models.t5 import abstract_variables, init_variables

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "encoder_segment_ids", "decoder_segment_ids")


@flax.struct.dataclass
class TrainState:
  """`params` are what trains (everything, or with LoRA only the adapters); `frozen` is LoRA's base."""
  step: jax.Array
  params: Any
  opt_state: Any
  frozen: Any = None

  def full_params(self):
    return lora.combine(self.frozen, self.params)


def batch_metrics(config: T5Config, params, batch, z_loss: float, dropout_rng=None):
  """(summed loss, metric sums) of one batch; dropout is on when an rng is given."""
  logits = T5(config).apply(
      {"params": params}, **{k: batch[k] for k in MODEL_FEATURES if k in batch},
      enable_dropout=dropout_rng is not None, rngs={"dropout": dropout_rng} if dropout_rng is not None else None)
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"].astype(jnp.float32)
  loss_sum, z_sum = cross_entropy(logits, targets, weights, z_loss)
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  return loss_sum, {"loss_sum": loss_sum, "z_loss_sum": z_sum, "tokens": jnp.sum(weights), "correct": correct}


def summarize(sums: dict) -> dict:
  """Per-token loss (z-loss included, as optimised), z-loss and token accuracy from metric sums."""
  tokens = jnp.maximum(sums["tokens"], 1.0)
  return {"loss": sums["loss_sum"] / tokens, "z_loss": sums["z_loss_sum"] / tokens,
          "accuracy": sums["correct"] / tokens, "tokens": sums["tokens"]}


def _microbatches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...]; microbatch i takes rows i, i+n, ... so each device keeps its share."""
  return {k: jnp.swapaxes(v.reshape((v.shape[0] // n, n) + v.shape[1:]), 0, 1) for k, v in batch.items()}


def make_train_step(config: T5Config, tx: optax.GradientTransformation, z_loss: float = 1e-4,
                    loss_normalizing_factor: float | None = None, num_microbatches: int = 1):
  """train_step(state, batch, dropout_key) -> (state, metrics)."""
  # Gradients for the trained parameters only; LoRA's frozen base is an input.
  grad_fn = jax.grad(lambda p, frozen, b, rng: batch_metrics(config, lora.combine(frozen, p), b, z_loss, rng),
                     has_aux=True)

  def train_step(state: TrainState, batch: dict, dropout_key):
    rng = jax.random.fold_in(dropout_key, state.step)
    use_dropout = config.dropout_rate > 0
    if num_microbatches == 1:
      grads, sums = grad_fn(state.params, state.frozen, batch, rng if use_dropout else None)
    else:
      def accumulate(carry, xs):
        micro, i = xs
        g, m = grad_fn(state.params, state.frozen, micro, jax.random.fold_in(rng, i) if use_dropout else None)
        return jax.tree.map(jnp.add, carry, (g, m)), None

      zeros = jax.tree.map(jnp.zeros_like, (state.params, {k: jnp.zeros((), jnp.float32) for k in
                                                           ("loss_sum", "z_loss_sum", "tokens", "correct")}))
      (grads, sums), _ = jax.lax.scan(
          accumulate, zeros, (_microbatches(batch, num_microbatches), jnp.arange(num_microbatches)))
    normalizer = loss_normalizing_factor if loss_normalizing_factor else jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / normalizer, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = summarize(sums)
    metrics["grad_norm"] = optax.global_norm(grads)
    # 0 when an update made any parameter NaN/Inf (or overflowed the norm): such a state must not be saved.
    metrics["params_finite"] = jnp.isfinite(optax.global_norm(params)).astype(jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, frozen=state.frozen), metrics

  return train_step


def make_eval_step(config: T5Config):
  """eval_step(params, batch, sums) -> `sums` plus the batch's metric sums (no dropout). Carrying the sums
  through the steps of an eval set makes each step wait for the one before, as training steps do: steps with
  collectives that are all in flight at once, in no fixed order, can deadlock processes on the CPU (gloo)."""
  return lambda params, batch, sums: jax.tree.map(jnp.add, sums, batch_metrics(config, params, batch, 0.0)[1])


def zero_eval_sums(shardings: "Shardings") -> dict:
  """The sums every eval set starts from, replicated on the mesh as eval_step takes them."""
  zeros = lambda: {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "z_loss_sum", "tokens", "correct")}
  return jax.jit(zeros, out_shardings=shardings.replicated)()


class Shardings:
  """Where the state and batches live on the mesh, and the abstract shapes to restore into."""

  def __init__(self, config: T5Config, tx: optax.GradientTransformation, mesh):
    boxed = abstract_variables(config)["params"]
    self.mesh = mesh
    abstract, shardings = nn.unbox(boxed), partitioning.param_shardings(boxed, mesh)
    self.full = shardings  # all parameters (LoRA: base and adapters), as eval and decoding take them
    if config.lora_rank:  # only the adapters train; the base is frozen (no gradients, no optimizer state)
      (self.abstract_params, self.abstract_frozen), (self.params, self.frozen) = \
          lora.split(abstract), lora.split(shardings)
    else:
      self.abstract_params, self.params, self.abstract_frozen, self.frozen = abstract, shardings, None, None
    self.abstract_opt_state = jax.eval_shape(tx.init, self.abstract_params)
    self.opt_state = partitioning.opt_state_shardings(self.abstract_opt_state, self.abstract_params,
                                                      self.params, mesh)
    self.replicated = NamedSharding(mesh, P())
    self.state = TrainState(step=self.replicated, params=self.params, opt_state=self.opt_state, frozen=self.frozen)
    self.batch = partitioning.batch_sharding(mesh)

  def restore_targets(self):
    """Abstract params and optimizer state carrying their shardings, for a sharded orbax restore."""
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    return (jax.tree.map(with_sharding, self.abstract_params, self.params),
            jax.tree.map(with_sharding, self.abstract_opt_state, self.opt_state))

  def frozen_target(self):
    """LoRA's abstract base parameters carrying their shardings."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_frozen, self.frozen)


def init_state(config: T5Config, tx, shardings: Shardings, rng, params=None, opt_state=None, step: int = 0,
               frozen=None):
  """A sharded TrainState: fresh parameters from rng unless given (LoRA: fresh adapters, peft's init; the base
  `frozen` given); optimizer state created under jit."""
  if params is None:
    trained = (lambda p: lora.split(p)[0]) if config.lora_rank else (lambda p: p)
    params = jax.jit(lambda r: trained(nn.unbox(init_variables(config, r))["params"]),
                     out_shardings=shardings.params)(rng)
  else:
    params = jax.device_put(params, shardings.params)
  if opt_state is None:
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), shardings.replicated), params=params,
                    opt_state=opt_state, frozen=frozen)


def jit_train_step(train_step, shardings: Shardings):
  return jax.jit(train_step, in_shardings=(shardings.state, shardings.batch, shardings.replicated),
                 out_shardings=(shardings.state, shardings.replicated), donate_argnums=(0,))


def jit_eval_step(eval_step, shardings: Shardings):
  return jax.jit(eval_step, in_shardings=(shardings.full, shardings.batch, shardings.replicated),
                 out_shardings=shardings.replicated)

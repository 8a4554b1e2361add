"""Decoding with a KV cache: greedy, temperature sampling with top-k / top-p, and beam search with t5x's
brevity penalty; and teacher-forced scoring. Each function is jitted once per (batch, length) shape.

Outputs are [batch, max_decode_length] token ids that end with EOS (1) where the model stopped, then 0s.
"""

import functools

import jax
import jax.numpy as jnp

from flan_jax.models import T5, T5Config
from flan_jax.models.t5 import NEG_INF

# The decode loops' matmuls have a few rows each (batch x beams). On the CPU, XLA's own dot emitter runs them
# faster than YNNPACK, to which XLA hands dots by default: BENCHMARKS.md, "Decoding on the AVX2 CPU" (greedy at
# batch 8 1.26-1.28x). A CPU option: libtpu's compiler accepts it and ignores it (flan-jax plan's decode compile).
LOOP_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

EOS_ID = 1


class Decoder:
  """Encode once, create the cache, then one cached decoder position per step."""

  def __init__(self, config: T5Config):
    self.model = T5(config)

  def encode(self, params, enc_tokens):
    return self.model.apply({"params": params}, enc_tokens, method=T5.encode)

  def init_cache(self, params, encoded, enc_tokens, max_length):
    dummy = jnp.zeros((enc_tokens.shape[0], max_length), jnp.int32)
    _, variables = self.model.apply({"params": params}, encoded, enc_tokens, dummy, jnp.ones_like(dummy),
                                    decode="init", method=T5.decode, mutable=["cache"])
    return variables["cache"]

  def step(self, params, cache, encoded, enc_tokens, tokens):
    """tokens [batch] -> (log-probs [batch, vocab], cache)."""
    logits, variables = self.model.apply({"params": params, "cache": cache}, encoded, enc_tokens,
                                         tokens[:, None], tokens[:, None], decode="step", method=T5.decode,
                                         mutable=["cache"])
    return jax.nn.log_softmax(logits[:, 0]), variables["cache"]


def _filter_logits(logits, top_k: int, top_p: float):
  """Keep the top_k most likely tokens and the smallest set whose probability reaches top_p."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # the smallest logit still inside the nucleus (the first token is always kept)
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


@functools.partial(jax.jit, static_argnames=("config", "max_length", "temperature", "top_k", "top_p"),
                   compiler_options=LOOP_COMPILER_OPTIONS)
def sample(params, enc_tokens, rng, *, config: T5Config, max_length: int, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0):
  """Greedy (temperature 0) or sampled decoding. Returns (tokens, sum of log-probs of the chosen tokens).
  `rng` is a key, or its raw uint32 data."""
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  dec = Decoder(config)
  encoded = dec.encode(params, enc_tokens)
  cache = dec.init_cache(params, encoded, enc_tokens, max_length)
  batch = enc_tokens.shape[0]

  def cond(state):
    i, _, _, done, _, _, _ = state
    return (i < max_length) & ~jnp.all(done)

  def body(state):
    i, tokens, last, done, cache, rng, score = state
    logp, cache = dec.step(params, cache, encoded, enc_tokens, last)
    rng, key = jax.random.split(rng)
    if temperature == 0.0:
      # argmax by top_k: the same token (ties go to the lower id), 4x faster than argmax on XLA's CPU backend
      chosen = jax.lax.top_k(logp, 1)[1][:, 0]
    else:
      chosen = jax.random.categorical(key, _filter_logits(logp / temperature, top_k, top_p))
    chosen = jnp.where(done, 0, chosen).astype(jnp.int32)
    score = score + jnp.where(done, 0.0, jnp.take_along_axis(logp, chosen[:, None], -1)[:, 0])
    tokens = tokens.at[:, i].set(chosen)
    return i + 1, tokens, chosen, done | (chosen == EOS_ID), cache, rng, score

  init = (jnp.array(0), jnp.zeros((batch, max_length), jnp.int32), jnp.zeros((batch,), jnp.int32),
          jnp.zeros((batch,), bool), cache, rng, jnp.zeros((batch,), jnp.float32))
  _, tokens, _, _, _, _, score = jax.lax.while_loop(cond, body, init)
  return tokens, score


def brevity_penalty(alpha: float, length):
  """t5x / GNMT: ((5 + length) / 6) ** alpha; alpha 0 ranks by raw log-probability."""
  return jnp.power((5.0 + length) / 6.0, alpha)


@functools.partial(jax.jit, static_argnames=("config", "max_length", "beam_size", "alpha"),
                   compiler_options=LOOP_COMPILER_OPTIONS)
def beam_search(params, enc_tokens, *, config: T5Config, max_length: int, beam_size: int = 4, alpha: float = 0.6):
  """Beam search as in t5x: 2k candidates a step, EOS candidates finish with score logp / brevity penalty,
  the rest fill the k live beams; stop when no live beam can beat the worst finished one.
  Returns (best tokens [batch, max_length], their scores)."""
  dec = Decoder(config)
  batch, k = enc_tokens.shape[0], beam_size
  flat = lambda x: x.reshape((batch * k,) + x.shape[2:])
  unflat = lambda x: x.reshape((batch, k) + x.shape[1:])
  enc_tokens_k = jnp.repeat(enc_tokens, k, axis=0)
  encoded = jnp.repeat(dec.encode(params, enc_tokens), k, axis=0)  # each input encoded once, not once per beam
  cache = dec.init_cache(params, encoded, enc_tokens_k, max_length)

  def gather_beams(cache, indices):  # indices [batch, n] into the k beams of each example
    def g(path, x):
      # Cross-attention keys and values are the same for every beam of an example: not copied.
      if x.ndim == 0 or x.shape[0] != batch * k or "encoder_decoder_attention" in jax.tree_util.keystr(path):
        return x
      return flat(jnp.take_along_axis(unflat(x), indices.reshape(indices.shape + (1,) * (x.ndim - 1)), axis=1))
    return jax.tree_util.tree_map_with_path(g, cache)

  def cond(state):
    i, alive_logp, _, _, finished_scores, _ = state
    best_alive = alive_logp[:, 0] / brevity_penalty(alpha, max_length)
    worst_finished = jnp.min(finished_scores, axis=1)
    return (i < max_length) & ~jnp.all(worst_finished > best_alive)

  def body(state):
    i, alive_logp, alive_seqs, cache, finished_scores, finished_seqs = state
    last = jnp.where(i == 0, 0, alive_seqs[:, :, jnp.maximum(i - 1, 0)])
    logp, cache = dec.step(params, cache, encoded, enc_tokens_k, flat(last))
    vocab = logp.shape[-1]
    candidates = (alive_logp[:, :, None] + unflat(logp)).reshape(batch, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)
    beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seqs, beam[:, :, None], axis=1).at[:, :, i].set(token)
    is_eos = token == EOS_ID
    # New live beams: the k best candidates that did not end.
    live_logp = jnp.where(is_eos, NEG_INF, top_logp)
    live_logp, live_pos = jax.lax.top_k(live_logp, k)
    new_alive_seqs = jnp.take_along_axis(seqs, live_pos[:, :, None], axis=1)
    cache = gather_beams(cache, jnp.take_along_axis(beam, live_pos, axis=1))
    # Finished: keep the k best of the old finished and the EOS candidates.
    done_scores = jnp.where(is_eos, top_logp / brevity_penalty(alpha, i + 1), NEG_INF)
    all_scores = jnp.concatenate([finished_scores, done_scores], axis=1)
    all_seqs = jnp.concatenate([finished_seqs, seqs], axis=1)
    finished_scores, keep = jax.lax.top_k(all_scores, k)
    finished_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
    return i + 1, live_logp, new_alive_seqs, cache, finished_scores, finished_seqs

  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  init = (jnp.array(0), alive_logp, jnp.zeros((batch, k, max_length), jnp.int32), cache,
          jnp.full((batch, k), NEG_INF), jnp.zeros((batch, k, max_length), jnp.int32))
  _, alive_logp, alive_seqs, _, finished_scores, finished_seqs = jax.lax.while_loop(cond, body, init)
  # Examples with no finished beam return their best live beam.
  none_finished = finished_scores[:, 0] <= NEG_INF / 2
  best = jnp.where(none_finished[:, None], alive_seqs[:, 0], finished_seqs[:, 0])
  score = jnp.where(none_finished, alive_logp[:, 0] / brevity_penalty(alpha, max_length), finished_scores[:, 0])
  return best, score


@functools.partial(jax.jit, static_argnames=("config",))
def score(params, enc_tokens, dec_inputs, targets, *, config: T5Config):
  """Log-likelihood of each example's targets (sum over non-pad target tokens), teacher forced."""
  logits = T5(config).apply({"params": params}, enc_tokens, dec_inputs, targets)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
  return jnp.sum(logp * (targets > 0), axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def score_options(params, enc_tokens, dec_inputs, targets, *, config: T5Config):
  """[batch, options] log-likelihoods of each option's targets ([options, length]) after each input; the encoder
  runs once per input, the decoder once per (input, option)."""
  model = T5(config)
  batch, options = enc_tokens.shape[0], targets.shape[0]
  encoded = model.apply({"params": params}, enc_tokens, method=T5.encode)
  each = lambda x: jnp.repeat(x, options, axis=0)   # input i's rows i*options ... i*options + options-1
  tiled = lambda x: jnp.tile(x, (batch, 1))
  logits = model.apply({"params": params}, each(encoded), each(enc_tokens), tiled(dec_inputs), tiled(targets),
                       method=T5.decode)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tiled(targets)[..., None], axis=-1)[..., 0]
  return jnp.sum(logp * (tiled(targets) > 0), axis=-1).reshape(batch, options)

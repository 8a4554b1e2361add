"""T5 encoder-decoder in Flax linen, with t5x's parameter names and logical axis annotations.

Covers T5.1.1 / Flan-T5 (gated GELU, untied output layer) and the original T5 (ReLU, tied embeddings with
d_model**-0.5 output scaling). Inputs may be packed: segment ids keep attention inside each example.

Linen rather than nnx: its parameter trees are plain nested dicts whose paths are t5x's checkpoint names, and
`nn.with_logical_partitioning` gives every parameter the logical axes the partitioner maps onto the mesh.
"""

import functools
import math
import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.models.config import T5Config

NEG_INF = -1e10

ACTIVATION_FNS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # HF's gelu_new, t5x's nn.gelu
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def constrain(x, axes):
  """Logical sharding constraint on an activation (a no-op outside a mesh with axis rules)."""
  return nn.with_logical_constraint(x, axes)


def relative_position_buckets(q_len: int, k_len: int, bidirectional: bool, num_buckets: int,
                              max_distance: int, q_offset: int = 0) -> np.ndarray:
  """[q_len, k_len] bucket ids of (key position - query position), as in Mesh TF / HF T5.

  Computed in numpy float32 at trace time: shapes are static and positions within a packed segment differ
  exactly as in the unpacked example, so the table is shared by packed and unpacked inputs.
  """
  relative = np.arange(k_len)[None, :] - (np.arange(q_len)[:, None] + q_offset)
  buckets = np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative > 0).astype(relative.dtype) * num_buckets
    distance = np.abs(relative)
  else:
    distance = -np.minimum(relative, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide="ignore"):
    scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
  large = max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(distance < max_exact, distance, large)


def _init(stddev):
  return nn.initializers.normal(stddev=stddev)


# Our projection names -> peft's T5 module names (the LoRA targets).
PEFT_NAMES = {"query": "q", "key": "k", "value": "v", "out": "o", "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1",
              "wo": "wo"}


def _lora_a_init(key, shape, dtype):
  """peft's lora_A init (kaiming_uniform, a=sqrt(5)): uniform in +-1/sqrt(fan_in)."""
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / math.sqrt(shape[0])


class Dense(nn.Module):
  """Bias-free projection whose kernel is stored 2D (in, out) like t5x checkpoints; with `lora` (a T5Config
  whose lora_targets name this projection) also a LoRA adapter: y = x W + dropout(x) A B * scale."""
  features: int
  axes: tuple
  stddev: float
  dtype: str = "float32"
  lora: Any = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(_init(self.stddev), self.axes),
                        (x.shape[-1], self.features), jnp.float32)
    # A 2D matmul: XLA's CPU backward pass is about twice as fast as for the [batch, length, in] form.
    flat = x.reshape(-1, x.shape[-1])
    y = jnp.dot(flat, kernel.astype(self.dtype))
    c = self.lora
    if c is not None and c.lora_rank and PEFT_NAMES.get(self.name) in c.lora_targets:
      a = self.param("lora_a", nn.with_logical_partitioning(_lora_a_init, (self.axes[0], None)),
                     (x.shape[-1], c.lora_rank), jnp.float32)
      b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, self.axes[1])),
                     (c.lora_rank, self.features), jnp.float32)
      h = nn.Dropout(c.lora_dropout)(flat, deterministic=self.deterministic)
      a, b = a.astype(self.dtype), b.astype(self.dtype)
      if self.axes[1] != "embed" and _model_ways() > 1:  # B's output axis is split over 'model'
        y = y + _lora_delta_partial_input_grad(h, a, b, lora_scale(c))
      else:
        y = y + _lora_delta(h, a, b, lora_scale(c))
    return y.reshape(x.shape[:-1] + (self.features,))


def _model_ways() -> int:
  """How many ways the mesh being traced under (`jax.set_mesh`) splits 'model'; 1 outside a mesh."""
  return dict(jax.sharding.get_abstract_mesh().shape).get("model", 1)


def _lora_delta(h, a, b, scale):
  return jnp.dot(jnp.dot(h, a), b) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _lora_delta_partial_input_grad(h, a, b, scale):
  """(h A) B * scale, whose input gradient is dy (A B)^T * scale rather than autodiff's (dy B^T) A^T.

  With B's output axis split over 'model' (q, k, v, wi), dy (A B)^T is a partial sum over 'model' like the frozen
  kernel's dy W^T, so XLA adds the two and all-reduces once. Autodiff's order all-reduces the rank-r dy B^T first,
  and the whole adapter term then forces the kernel's share to be all-reduced on its own: more collectives and
  buffers than full finetuning (xl, v4-64, 4 x 8). The price is one input-gradient matmul per adapted kernel, so
  without a 'model' split autodiff's order is kept."""
  return _lora_delta(h, a, b, scale)


def _lora_delta_fwd(h, a, b, scale):
  ha = jnp.dot(h, a)
  return jnp.dot(ha, b) * scale, (h, a, b, ha)


def _lora_delta_bwd(scale, residuals, dy):
  h, a, b, ha = residuals
  dy = dy * scale
  return jnp.dot(dy, jnp.dot(a, b).T), jnp.dot(h.T, jnp.dot(dy, b.T)), jnp.dot(ha.T, dy)


_lora_delta_partial_input_grad.defvjp(_lora_delta_fwd, _lora_delta_bwd)


def lora_scale(c) -> float:
  return c.lora_alpha / (math.sqrt(c.lora_rank) if c.lora_use_rslora else c.lora_rank)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias; computed in float32."""
  epsilon: float
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding; `attend` is the tied output projection of the original T5."""
  vocab_size: int
  features: int
  dtype: str = "float32"

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(_init(1.0), ("vocab", "embed")),
        (self.vocab_size, self.features), jnp.float32)

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    return jnp.dot(x, self.embedding.astype(self.dtype).T)


class RelativePositionBias(nn.Module):
  """One learned bias per (head, bucket), shared by all layers of a stack."""
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len, k_len, query=None):
    """[1, heads, q_len, k_len]; with `query` (a traced position), only that query's row [1, heads, 1, k_len]:
    a decode step gathers one row of bucket ids instead of building the whole table."""
    c = self.config
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                     ("heads", "relpos_buckets")),
        (c.num_heads, c.relative_attention_num_buckets), jnp.float32)
    buckets = relative_position_buckets(q_len, k_len, self.bidirectional, c.relative_attention_num_buckets,
                                        c.relative_attention_max_distance)
    if query is not None:
      buckets = jax.lax.dynamic_slice_in_dim(jnp.asarray(buckets), query, 1, axis=0)
    return table[:, buckets][None]  # [1, heads, q, k]


@jax.custom_vjp
def attend(q, k, v, mask, position_bias, keep):
  """softmax(q k^T + mask + position_bias), times the dropout mask `keep`, times v; [batch, heads, length, kv].

  The additive `mask` ([batch, 1, q, k], 0 or NEG_INF) gets no gradient and `position_bias` ([1, heads, q, k]
  or a scalar) gets one summed to its own shape, so no [batch, heads, q, k] bias is ever built, kept or
  accumulated across layers. `keep` broadcasts along the query axis ([batch, heads, 1, k]) as in t5x.
  The backward pass keeps the probabilities in the activation dtype (bf16 halves the largest residual) and
  uses rowsum(dP * P) = rowsum(dO * O) (as FlashAttention does): no transposed copies of P.
  """
  return _attend_fwd(q, k, v, mask, position_bias, keep)[0]


def _attend_fwd(q, k, v, mask, position_bias, keep):
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) + mask + position_bias
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs * keep, v)
  return out, (q, k, v, mask, position_bias, probs, keep, out)


def _attend_bwd(residuals, d_out):
  q, k, v, mask, position_bias, probs, keep, out = residuals
  d_dropped = jnp.einsum("bhqd,bhkd->bhqk", d_out, v).astype(jnp.float32)
  d_v = jnp.einsum("bhqk,bhqd->bhkd", probs * keep, d_out)
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_logits = probs.astype(jnp.float32) * (d_dropped * keep - row)
  d_q = jnp.einsum("bhqk,bhkd->bhqd", d_logits.astype(q.dtype), k)
  d_k = jnp.einsum("bhqk,bhqd->bhkd", d_logits.astype(q.dtype), q)
  d_bias = _sum_to_shape(d_logits, position_bias.shape)
  return d_q, d_k, d_v, jnp.zeros_like(mask), d_bias, jnp.zeros_like(keep)


def _sum_to_shape(x, shape):
  """x summed over the axes `shape` broadcasts (a scalar: all). On CPU the batch axis is contracted with a vector
  of ones: XLA's CPU backend runs that dot faster than its reduction over a leading axis of [batch, heads, q, k].
  Elsewhere a plain sum: on TPU the dot needs a relaid-out copy of the float32 [batch, heads, q, k] gradient,
  which more than doubles the per-chip memory of the base model at 2048/512 (`flan-jax plan` shows it)."""
  if not shape:
    return jnp.sum(x)
  if shape[0] == 1 and x.shape[0] > 1:
    x = jax.lax.platform_dependent(
        x, cpu=lambda x: jnp.einsum("b...,b->...", x, jnp.ones((x.shape[0],), x.dtype))[None],
        default=lambda x: jnp.sum(x, axis=0, keepdims=True))
  axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


attend.defvjp(_attend_fwd, _attend_bwd)


def use_cudnn(config: T5Config, dropout: bool, decode: str | None) -> bool:
  """Whether attention runs as cuDNN's fused kernel: on a GPU with bf16 activations (cuDNN's flash attention has
  no float32), without attention dropout (jax.nn.dot_product_attention takes no dropout mask), over whole
  sequences (a decoding step's single query gains nothing), at head sizes cuDNN takes."""
  return (config.attention == "auto" and jax.default_backend() == "gpu" and config.dtype == "bfloat16"
          and not dropout and decode != "step" and config.d_kv % 8 == 0 and config.d_kv <= 128)


def fused_attend(q, k, v, mask, position_bias, implementation="cudnn"):
  """attend() through jax.nn.dot_product_attention ([batch, length, heads, kv] in and out). T5 does not scale
  the logits; the relative-position bias keeps its [1, heads, q, k] shape, the one whose gradient cuDNN
  computes, in the activation dtype (a float32 bias gave NaN gradients: jax #32242); the padding and packing
  mask goes as a boolean mask of its own. `implementation="xla"` is the CPU test's reference path."""
  bias = None if jnp.ndim(position_bias) == 0 else position_bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask == 0, scale=1.0, implementation=implementation)


class Attention(nn.Module):
  """Multi-head dot-product attention without logit scaling (T5 folds 1/sqrt(d_kv) into the init).

  Decoding keeps a cache: `decode="init"` creates it (self-attention: zeros for the whole decode length;
  cross-attention: the encoder's keys and values, computed once); `decode="step"` runs one query position,
  writing its key and value at `index`.
  """
  config: T5Config
  deterministic: bool

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask, position_bias, decode=None, index=None, cross=False):
    c = self.config
    inner = c.num_heads * c.d_kv
    proj = functools.partial(Dense, inner, ("embed", "joined_kv"), dtype=c.dtype, lora=c,
                             deterministic=self.deterministic)
    # [batch, heads, length, kv]: the layout whose einsums (and their gradients) need no transposes inside.
    split = lambda x: constrain(x.reshape(x.shape[:2] + (c.num_heads, c.d_kv)).transpose(0, 2, 1, 3),
                                ("batch", "heads", "length", "kv"))
    q = split(proj(stddev=(c.d_model * c.d_kv) ** -0.5, name="query")(inputs_q))
    if decode and cross and decode == "step":
      k, v = self.get_variable("cache", "key"), self.get_variable("cache", "value")
    else:
      k = split(proj(stddev=c.d_model ** -0.5, name="key")(inputs_kv))
      v = split(proj(stddev=c.d_model ** -0.5, name="value")(inputs_kv))
    if decode == "init":
      self.put_variable("cache", "key", k if cross else jnp.zeros_like(k))
      self.put_variable("cache", "value", v if cross else jnp.zeros_like(v))
    elif decode == "step" and not cross:
      k = jax.lax.dynamic_update_slice(self.get_variable("cache", "key"), k, (0, 0, index, 0))
      v = jax.lax.dynamic_update_slice(self.get_variable("cache", "value"), v, (0, 0, index, 0))
      self.put_variable("cache", "key", k)
      self.put_variable("cache", "value", v)
    keep = jnp.ones((), c.dtype)
    if c.dropout_rate > 0 and not self.deterministic:  # one mask for all queries of a head, as t5x
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - c.dropout_rate,
                                  q.shape[:2] + (1,) + k.shape[2:3]).astype(c.dtype) / (1.0 - c.dropout_rate)
    if use_cudnn(c, dropout=c.dropout_rate > 0 and not self.deterministic, decode=decode):
      out = fused_attend(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), mask, position_bias)
    else:
      out = attend(q, k, v, mask, position_bias, keep).transpose(0, 2, 1, 3)
    out = out.reshape(inputs_q.shape[:2] + (inner,))
    out = constrain(out, ("batch", "length", "joined_kv"))
    return Dense(c.d_model, ("joined_kv", "embed"), inner ** -0.5, dtype=c.dtype, lora=c,
                 deterministic=self.deterministic, name="out")(out)


class MLP(nn.Module):
  """Feed-forward block; several activations are multiplied together (gated GELU = gelu(wi_0) * wi_1)."""
  config: T5Config
  deterministic: bool

  @nn.compact
  def __call__(self, x):
    c = self.config
    acts = c.mlp_activations
    hidden = []
    for i, act in enumerate(acts):
      name = "wi" if len(acts) == 1 else f"wi_{i}"
      h = Dense(c.d_ff, ("embed", "mlp"), c.d_model ** -0.5, dtype=c.dtype, lora=c,
                deterministic=self.deterministic, name=name)(x)
      hidden.append(ACTIVATION_FNS[act](h))
    h = functools.reduce(operator.mul, hidden)
    h = nn.Dropout(c.dropout_rate)(h, deterministic=self.deterministic)
    h = constrain(h, ("batch", "length", "mlp"))
    return Dense(c.d_model, ("mlp", "embed"), c.d_ff ** -0.5, dtype=c.dtype, lora=c,
                 deterministic=self.deterministic, name="wo")(h)


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask, position_bias):
    """position_bias None: this layer has its own (`relpos_per_layer`)."""
    c = self.config
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    if position_bias is None:
      position_bias = RelativePositionBias(c, bidirectional=True, name="relpos_bias")(x.shape[1], x.shape[1])
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_attention_layer_norm")(x)
    x = x + drop(Attention(c, self.deterministic, name="attention")(h, h, mask, position_bias))
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_mlp_layer_norm")(x)
    x = x + drop(MLP(c, self.deterministic, name="mlp")(h))
    return constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool

  @nn.compact
  def __call__(self, x, encoded, self_mask, position_bias, cross_mask, decode=None, index=None):
    """position_bias None: this layer has its own (`relpos_per_layer`)."""
    c = self.config
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    if position_bias is None:
      relpos = RelativePositionBias(c, bidirectional=False, name="relpos_bias")
      length = self_mask.shape[-1]
      position_bias = relpos(length, length, query=index if decode == "step" else None)
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_self_attention_layer_norm")(x)
    x = x + drop(Attention(c, self.deterministic, name="self_attention")(h, h, self_mask, position_bias, decode, index))
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_cross_attention_layer_norm")(x)
    x = x + drop(Attention(c, self.deterministic, name="encoder_decoder_attention")(
        h, encoded, cross_mask, jnp.zeros((), jnp.float32), decode, index, cross=True))
    h = RMSNorm(c.layer_norm_epsilon, c.dtype, name="pre_mlp_layer_norm")(x)
    x = x + drop(MLP(c, self.deterministic, name="mlp")(h))
    return constrain(x, ("batch", "length", "embed"))


def attention_bias(q_valid, k_valid, q_segments=None, k_segments=None, causal=False):
  """Additive [batch, 1, q, k] mask: 0 where a query may attend a key, NEG_INF elsewhere."""
  mask = q_valid[:, :, None] & k_valid[:, None, :]
  if q_segments is not None:
    mask &= q_segments[:, :, None] == k_segments[:, None, :]
  if causal:
    mask &= jnp.tril(jnp.ones((q_valid.shape[1], k_valid.shape[1]), bool))[None]
  return jnp.where(mask, 0.0, NEG_INF)[:, None].astype(jnp.float32)


def _layer_class(cls, config):
  return nn.remat(cls) if config.remat else cls


class Encoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, enable_dropout=False):
    c = self.config
    deterministic = not enable_dropout
    length = tokens.shape[1]
    valid = tokens > 0
    mask = attention_bias(valid, valid, segment_ids, segment_ids)
    position_bias = None if c.relpos_per_layer else RelativePositionBias(
        c, bidirectional=True, name="relpos_bias")(length, length)
    x = nn.Dropout(c.dropout_rate)(self.embedder(tokens), deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    layer = _layer_class(EncoderLayer, c)
    for i in range(c.num_encoder_layers):
      x = layer(c, deterministic, name=f"layers_{i}")(x, mask, position_bias)
    x = RMSNorm(c.layer_norm_epsilon, c.dtype, name="encoder_norm")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_tokens, decoder_input_tokens, decoder_target_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None, enable_dropout=False, decode=None):
    """Teacher-forced logits; or with decode="init" (inputs of the full decode length) create the cache,
    and with decode="step" (inputs [batch, 1]) run the next position from it."""
    c = self.config
    deterministic = not enable_dropout
    relpos = None if c.relpos_per_layer else RelativePositionBias(c, bidirectional=False, name="relpos_bias")
    if decode == "step":
      max_length = self.get_variable("cache", "index_limit").shape[0]
      index = self.get_variable("cache", "index")
      positions = jnp.arange(max_length)
      position_bias = None if relpos is None else relpos(max_length, max_length, query=index)
      self_mask = jnp.where(positions <= index, 0.0, NEG_INF)[None, None, None, :].astype(jnp.float32)
      cross_mask = jnp.where(encoder_tokens > 0, 0.0, NEG_INF)[:, None, None, :].astype(jnp.float32)
      self.put_variable("cache", "index", index + 1)
    else:
      length = decoder_input_tokens.shape[1]
      index = None
      # Decoder inputs start with token 0 (= pad), so padding is read off the targets, as t5x does.
      dec_valid = decoder_target_tokens > 0
      self_mask = attention_bias(dec_valid, dec_valid, decoder_segment_ids, decoder_segment_ids, causal=True)
      position_bias = None if relpos is None else relpos(length, length)
      cross_mask = attention_bias(dec_valid, encoder_tokens > 0, decoder_segment_ids, encoder_segment_ids)
      if decode == "init":
        self.put_variable("cache", "index", jnp.zeros((), jnp.int32))
        self.put_variable("cache", "index_limit", jnp.zeros((length,), jnp.int8))  # carries the length
    x = nn.Dropout(c.dropout_rate)(self.embedder(decoder_input_tokens), deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    layer = _layer_class(DecoderLayer, c) if not decode else DecoderLayer
    for i in range(c.num_decoder_layers):
      x = layer(c, deterministic, name=f"layers_{i}")(x, encoded, self_mask, position_bias, cross_mask, decode, index)
    x = RMSNorm(c.layer_norm_epsilon, c.dtype, name="decoder_norm")(x)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    if c.tie_embeddings:
      logits = self.embedder.attend(x * (c.d_model ** -0.5))
    else:
      logits = Dense(c.vocab_size, ("embed", "vocab"), c.d_model ** -0.5, dtype=c.dtype, name="logits_dense")(x)
    return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class T5(nn.Module):
  """Encoder-decoder taking the features of seqio's EncDecFeatureConverter; returns float32 logits."""
  config: T5Config

  def setup(self):
    c = self.config
    self.token_embedder = Embed(c.vocab_size, c.d_model, c.dtype)
    self.encoder = Encoder(c, self.token_embedder)
    self.decoder = Decoder(c, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=False):
    return self.encoder(encoder_input_tokens, encoder_segment_ids, enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, enable_dropout=False, decode=None):
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                        encoder_segment_ids, decoder_segment_ids, enable_dropout, decode)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None, enable_dropout=False, **unused_features):
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, enable_dropout)


def dummy_features(batch: int = 1, length: int = 1) -> dict:
  """Smallest batch that initialises every parameter (shapes do not depend on lengths)."""
  tokens = jnp.ones((batch, length), jnp.int32)
  return dict(encoder_input_tokens=tokens, decoder_input_tokens=tokens, decoder_target_tokens=tokens)


def init_variables(config: T5Config, rng) -> dict:
  """Variables with their logical-axis boxes (flax `LogicallyPartitioned`), for the partitioner."""
  return T5(config).init(rng, **dummy_features())


def abstract_variables(config: T5Config) -> dict:
  """Shapes, dtypes and logical axes of every parameter, without allocating them."""
  return jax.eval_shape(lambda: init_variables(config, jax.random.key(0)))


def param_count(config: T5Config) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(abstract_variables(config))))

"""Our Flax T5 against HuggingFace's PyTorch T5 on the same (imported) weights: logits, loss and gradients."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_reference
from flan_jax import checkpoints, hf
from flan_jax.losses import cross_entropy
from flan_jax.models import T5

LOGIT_TOL = 2e-5  # README's claim: logits within 2e-5 of transformers' (float32, Flan-T5-small shape)
GRAD_TOL = 2e-5   # and gradients within 2e-5 relative


def _import(hf_model, tmp_path, name, shared_data):
  """save_pretrained, then our import-hf, then a restore of the checkpoint it wrote."""
  hf_dir = str(tmp_path / f"{name}_hf")
  hf_model.save_pretrained(hf_dir)
  vocab = os.path.join(shared_data, "t5_vocab", "spiece.model")
  ckpt = hf.import_hf(hf_dir, str(tmp_path / f"{name}_ckpt"), vocabulary=vocab)
  params, _, meta, _ = checkpoints.restore(ckpt)
  return checkpoints.model_config(meta), jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module", params=["t5_1_1", "v1_0"])
def pair(request, tmp_path_factory, shared_data):
  """(name, HF torch model, our config, our params) for a Flan-T5-small config and a v1.0 ReLU/tied one."""
  if request.param == "t5_1_1":
    hf_config = hf_reference.flan_t5_small_config(shared_data, dropout_rate=0.0)
  else:
    hf_config = dict(hf_reference.V10_CONFIG)
  model = hf_reference.build(hf_config)
  config, params = _import(model, tmp_path_factory.mktemp(request.param), request.param, shared_data)
  return request.param, model, config, params


def _batch(rng, lengths_enc, lengths_dec, enc_len=24, dec_len=12):
  """A padded batch: random tokens, each row its own length; decoder inputs are targets shifted right."""
  b = len(lengths_enc)
  enc = np.zeros((b, enc_len), np.int64)
  tgt = np.zeros((b, dec_len), np.int64)
  for i, (le, ld) in enumerate(zip(lengths_enc, lengths_dec)):
    enc[i, :le] = rng.integers(2, 32100, le)
    tgt[i, :ld] = rng.integers(2, 32100, ld)
  dec_in = np.concatenate([np.zeros((b, 1), np.int64), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def _ours(config, params, enc, dec_in, tgt, enc_seg=None, dec_seg=None):
  """Logits under jit, as training and decoding compute them (op by op took most of these tests' time)."""
  forward = jax.jit(lambda p, *inputs: T5(config).apply({"params": p}, *inputs))
  return np.asarray(forward(params, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt),
                            None if enc_seg is None else jnp.asarray(enc_seg),
                            None if dec_seg is None else jnp.asarray(dec_seg)))


def test_imported_config(pair):
  name, model, config, _ = pair
  assert config.tie_embeddings == (name == "v1_0")
  assert config.num_decoder_layers == model.config.num_decoder_layers
  assert config.mlp_activations == (("gelu", "linear") if name == "t5_1_1" else ("relu",))
  if name == "t5_1_1":
    assert (config.num_heads * config.d_kv, config.d_model) == (384, 512)


def test_logits_match_hf_with_padding(pair):
  name, model, config, params = pair
  rng = np.random.default_rng(0)
  enc, dec_in, tgt = _batch(rng, [24, 17, 5], [12, 9, 3])
  ours = _ours(config, params, enc, dec_in, tgt)
  theirs = hf_reference.logits(model, enc, (enc > 0).astype(np.int64), dec_in)
  valid = tgt > 0
  diff = np.abs(ours - theirs)[valid].max()
  print(f"{name}: max |logit diff| = {diff:.3g} (logit scale {np.abs(theirs[valid]).max():.3g})")
  assert diff <= LOGIT_TOL


def test_packed_row_equals_separate_runs(pair):
  _, _, config, params = pair
  rng = np.random.default_rng(1)
  enc, dec_in, tgt = _batch(rng, [9, 6], [5, 4], enc_len=9, dec_len=5)
  separate = _ours(config, params, enc, dec_in, tgt)
  # Pack both examples into one row of length 20 / 12 with trailing padding.
  p_enc = np.zeros((1, 20), np.int64); p_enc_seg = np.zeros((1, 20), np.int64)
  p_tgt = np.zeros((1, 12), np.int64); p_dec_in = np.zeros((1, 12), np.int64); p_dec_seg = np.zeros((1, 12), np.int64)
  p_enc[0, :9], p_enc[0, 9:15] = enc[0, :9], enc[1, :6]
  p_enc_seg[0, :9], p_enc_seg[0, 9:15] = 1, 2
  p_tgt[0, :5], p_tgt[0, 5:9] = tgt[0, :5], tgt[1, :4]
  p_dec_in[0, :5], p_dec_in[0, 5:9] = dec_in[0, :5], dec_in[1, :4]
  p_dec_seg[0, :5], p_dec_seg[0, 5:9] = 1, 2
  packed = _ours(config, params, p_enc, p_dec_in, p_tgt, p_enc_seg, p_dec_seg)
  diff = max(np.abs(packed[0, :5] - separate[0, :5]).max(), np.abs(packed[0, 5:9] - separate[1, :4]).max())
  assert diff <= 1e-5
  # Without segment ids the second example would see the first: the check above is not vacuous.
  leaky = _ours(config, params, p_enc, p_dec_in, p_tgt)
  assert np.abs(leaky[0, 5:9] - separate[1, :4]).max() > 1e-3


def test_loss_and_gradients_match_hf(pair):
  name, model, config, params = pair
  rng = np.random.default_rng(2)
  enc, dec_in, tgt = _batch(rng, [20, 11], [10, 6], enc_len=20, dec_len=10)
  weights = (tgt > 0).astype(np.float32)

  def loss_fn(p):
    logits = T5(config).apply({"params": p}, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt))
    total, _ = cross_entropy(logits, jnp.asarray(tgt), jnp.asarray(weights))
    return total / weights.sum()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)

  model.zero_grad()
  labels = torch.as_tensor(np.where(tgt > 0, tgt, -100))
  out = model(input_ids=torch.as_tensor(enc), attention_mask=torch.as_tensor((enc > 0).astype(np.int64)),
              decoder_input_ids=torch.as_tensor(dec_in), labels=labels)
  out.loss.backward()
  hf_grads = {n: p.grad.numpy() for n, p in model.named_parameters()}

  loss_rel = abs(float(loss) - out.loss.item()) / out.loss.item()
  worst, worst_name = 0.0, None
  for path, (hf_name, transpose) in hf.weight_map(config).items():
    ours = np.asarray(_get(grads, path))
    theirs = hf_grads[hf_name].T if transpose else hf_grads[hf_name]
    rel = np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30)
    if rel > worst:
      worst, worst_name = rel, "/".join(path)
  print(f"{name}: loss rel diff {loss_rel:.3g}; worst gradient rel diff {worst:.3g} at {worst_name}")
  assert loss_rel <= 1e-6
  assert worst <= GRAD_TOL


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize("bias_shape,keep_shape", [((1, 3, 5, 7), None), ((1, 3, 5, 7), (2, 3, 1, 7)),
                                                  ((), (2, 3, 1, 7)), ((1, 3, 5, 7), (2, 3, 5, 7))])
def test_attention_custom_gradient_equals_autodiff(bias_shape, keep_shape):
  """The hand-written attention gradient against JAX's autodiff of the same formula: a padding mask
  [b,1,q,k] (no gradient), a position bias [1,h,q,k] or none (its gradient summed to its shape), and a
  dropout mask broadcast along the queries (t5x) or not."""
  from flan_jax.models.t5 import NEG_INF, attend
  keys = jax.random.split(jax.random.key(0), 7)
  q, v = jax.random.normal(keys[0], (2, 3, 5, 4)), jax.random.normal(keys[2], (2, 3, 7, 4))
  k = jax.random.normal(keys[1], (2, 3, 7, 4))
  mask = jnp.where(jax.random.bernoulli(keys[6], 0.7, (2, 1, 5, 7)).at[..., 0].set(True), 0.0, NEG_INF)
  bias = jax.random.normal(keys[3], bias_shape)
  keep = (jax.random.bernoulli(keys[4], 0.8, keep_shape) / 0.8) if keep_shape else jnp.ones(())
  cotangent = jax.random.normal(keys[5], (2, 3, 5, 4))
  reference = lambda q, k, v, b: jnp.einsum(
      "bhqk,bhkd->bhqd", jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k) + mask + b, axis=-1) * keep, v)
  ours = lambda q, k, v, b: attend(q, k, v, mask, b, keep)
  assert np.allclose(ours(q, k, v, bias), reference(q, k, v, bias), atol=1e-6)
  g_ours = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * cotangent), argnums=(0, 1, 2, 3)))(q, k, v, bias)
  g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(reference(*a) * cotangent), argnums=(0, 1, 2, 3)))(q, k, v, bias)
  for a, b in zip(g_ours, g_ref):
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    assert a.ndim == 0 or np.abs(a).max() > 1e-3  # a real gradient (a scalar bias has none: softmax shifts)


def test_fused_attention_path_equals_ours_and_is_chosen_only_where_cudnn_applies(monkeypatch):
  """On a GPU with bf16 activations attention runs through jax.nn.dot_product_attention (cuDNN); here its XLA
  implementation stands in for cuDNN, so what is checked is our side: layouts, no logit scaling, the bias and
  the packing mask, values and gradients of a whole packed model, and when the fused path is chosen."""
  import dataclasses
  import functools

  import flax.linen as nn

  from flan_jax.models import T5Config, t5
  config = T5Config(vocab_size=64, d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=2,
                    num_decoder_layers=2, dtype="bfloat16")
  # the choice
  assert not t5.use_cudnn(config, dropout=False, decode=None)  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert t5.use_cudnn(config, dropout=False, decode=None) and t5.use_cudnn(config, dropout=False, decode="init")
  assert not t5.use_cudnn(config, dropout=True, decode=None)  # no dropout in the fused API
  assert not t5.use_cudnn(config, dropout=False, decode="step")
  assert not t5.use_cudnn(dataclasses.replace(config, dtype="float32"), dropout=False, decode=None)
  assert not t5.use_cudnn(dataclasses.replace(config, attention="xla"), dropout=False, decode=None)
  # the same model through both paths, packed rows with padding
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, 64, (2, 10)), jnp.int32).at[1, 8:].set(0)
  dec = jnp.asarray(rng.integers(2, 64, (2, 6)), jnp.int32).at[1, 5:].set(0)
  enc_seg = jnp.asarray([[1] * 4 + [2] * 6, [1] * 8 + [0] * 2], jnp.int32)
  dec_seg = jnp.asarray([[1] * 3 + [2] * 3, [1] * 5 + [0]], jnp.int32)
  dec_in = jnp.where(jnp.arange(6) % 3 == 0, 0, jnp.roll(dec, 1, axis=1))

  def loss(params, model_config):
    logits = T5(model_config).apply({"params": params}, enc, dec_in, dec, encoder_segment_ids=enc_seg,
                                    decoder_segment_ids=dec_seg)
    return jnp.sum(cross_entropy(logits.astype(jnp.float32), dec, (dec > 0).astype(jnp.float32))[0]), logits

  monkeypatch.setattr(t5, "fused_attend", functools.partial(t5.fused_attend, implementation="xla"))
  params = nn.unbox(T5(config).init(jax.random.key(0), enc, dec_in, dec)["params"])
  (l_fused, logits_fused), g_fused = jax.value_and_grad(loss, has_aux=True)(params, config)
  xla = dataclasses.replace(config, attention="xla")
  (l_xla, logits_xla), g_xla = jax.value_and_grad(loss, has_aux=True)(params, xla)
  assert np.allclose(np.float32(logits_fused), np.float32(logits_xla), atol=0.05)  # bf16 activations
  assert abs(float(l_fused) - float(l_xla)) <= 0.02 * abs(float(l_xla))
  for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_xla)):
    assert np.allclose(np.float32(a), np.float32(b), atol=0.05 * float(np.abs(b).max()) + 1e-6)
  relpos = g_fused["encoder"]["relpos_bias"]["rel_embedding"]
  assert np.abs(relpos).max() > 1e-4  # the position bias gets its gradient through the fused path

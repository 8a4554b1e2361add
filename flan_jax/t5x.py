"""T5X checkpoints <-> flan-jax checkpoints, without t5x.

A T5X checkpoint directory `checkpoint_<step>/` holds a msgpack file `checkpoint` (`{'version': 3,
'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`) whose large arrays are tensorstore specs
pointing at zarr directories beside it (`target.encoder.layers_0.attention.query.kernel/`), while small ones
(Adafactor's `v_row`/`v_col`, placeholders, `step`) are inline. t5x's `examples/t5` network has our parameter
names; its `scalable_t5` network stacks the layers on axis 1 under `encoder/encoder/...` with 3-D attention
kernels and a relative-position bias per layer, which we unstack (and `relpos_per_layer`).
"""

import os
import re

import gin
import jax
import numpy as np
import tensorstore as ts
from etils import epath
from flax import serialization, traverse_util

from flan_jax import checkpoints, optim
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.partitioning import restore_target

CHECKPOINT_FILE = "checkpoint"
VERSION = 3
CHUNK_BYTES = 64 * 2**20  # t5x's desired chunk size


def is_t5x_checkpoint(path: str) -> bool:
  return (epath.Path(path) / CHECKPOINT_FILE).is_file()


def read_tree(ckpt_dir: str) -> dict:
  """The msgpack tree {'target': ..., 'state': ...}; its arrays are inline numpy or tensorstore spec dicts."""
  path = epath.Path(ckpt_dir) / CHECKPOINT_FILE
  if not path.is_file():
    raise UserError(f"{ckpt_dir} is not a T5X checkpoint: no {CHECKPOINT_FILE} file in it")
  try:
    tree = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # noqa: BLE001  (msgpack raises several types for a damaged file)
    raise UserError(f"{path} is not a readable T5X msgpack checkpoint: {e}") from e
  if not isinstance(tree, dict) or "optimizer" not in tree or "target" not in tree["optimizer"]:
    raise UserError(f"{path} is not a T5X checkpoint: no optimizer/target tree in it")
  if tree.get("version", 0) > VERSION:
    raise UserError(f"{path} is T5X checkpoint version {tree['version']}; this reader knows up to {VERSION}")
  return tree["optimizer"]


def _is_spec(leaf) -> bool:
  return isinstance(leaf, dict) and "driver" in leaf and "kvstore" in leaf


def _kvstore(ckpt_dir: str, relative: str) -> dict:
  match = re.fullmatch(r"gs://([^/]+)/?(.*)", ckpt_dir)
  if match:
    return {"driver": "gcs", "bucket": match.group(1), "path": os.path.join(match.group(2), relative)}
  return {"driver": "file", "path": os.path.join(os.path.abspath(ckpt_dir), relative)}


def read_array(ckpt_dir: str, leaf, name: str) -> np.ndarray:
  """An inline array as is; a tensorstore spec read in full (a missing chunk is an error, not zeros)."""
  if not _is_spec(leaf):
    return np.asarray(leaf)
  spec = dict(leaf)
  relative = spec.pop("path", None) or spec["kvstore"].get("path")
  spec["kvstore"] = _kvstore(ckpt_dir, relative)
  spec["fill_missing_data_reads"] = False
  try:
    return ts.open(spec, open=True, read=True).result().read().result()
  except Exception as e:  # noqa: BLE001  (tensorstore reports missing/corrupt data as ValueError and others)
    raise UserError(f"cannot read {name} from the T5X checkpoint {ckpt_dir}: {str(e).splitlines()[0]}") from e


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/", is_leaf=lambda _, x: _is_spec(x) or not isinstance(x, dict))


def _shape(leaf) -> tuple:
  return tuple(leaf["metadata"]["shape"]) if _is_spec(leaf) else np.shape(leaf)


# --- t5x names and layouts -> ours ---

def _scanned(flat: dict) -> bool:
  return any(k.startswith("encoder/encoder/") for k in flat)


def _unstack(name: str, shape: tuple) -> list[tuple[str, callable]]:
  """For a scalable_t5 parameter: [(our name, numpy fn from the stacked array)] for each layer."""
  stack, _, rest = name.partition("/")
  inner = rest.partition("/")[2]  # encoder/encoder/attention/... -> attention/...
  out = []
  for i in range(shape[1]):
    ours = f"{stack}/layers_{i}/{inner}"

    def take(a, i=i, inner=inner):
      layer = np.take(a, i, axis=1)
      if inner.endswith("out/kernel") and layer.ndim == 3:  # (heads, kv, embed) -> (heads*kv, embed)
        return layer.reshape(-1, layer.shape[-1])
      if layer.ndim == 3:  # query/key/value (embed, heads, kv) -> (embed, heads*kv)
        return layer.reshape(layer.shape[0], -1)
      return layer
    out.append((ours, take))
  return out


def parameter_sources(target: dict) -> dict:
  """Our parameter name -> (t5x name, fn turning the t5x array into ours)."""
  flat = _flat(target)
  if not _scanned(flat):
    return {name: (name, lambda a: a) for name in flat}
  sources = {}
  for name, leaf in flat.items():
    parts = name.split("/")
    if len(parts) > 2 and parts[0] in ("encoder", "decoder") and parts[1] == parts[0]:
      for ours, fn in _unstack(name, _shape(leaf)):
        sources[ours] = (name, fn)
    else:
      sources[name] = (name, lambda a: a)
  return sources


def infer_config(target: dict) -> T5Config:
  """The architecture from the parameter shapes; what shapes cannot tell (which activation, relative-position
  max distance, layer-norm epsilon) comes from gin's T5Config bindings or T5Config's defaults."""
  flat = {k: _shape(v) for k, v in _flat(target).items()}
  scanned = _scanned(flat)
  need = lambda key: flat.get(key) or _not_t5(key)
  vocab, d_model = need("token_embedder/embedding")
  if scanned:
    _, layers, heads, d_kv = need("encoder/encoder/attention/query/kernel")
    dec_layers = need("decoder/decoder/self_attention/query/kernel")[1]
    buckets = need("encoder/encoder/relpos_bias/rel_embedding")[2]
    mlp = "encoder/encoder/mlp/"
  else:
    layers = len({k.split("/")[1] for k in flat if k.startswith("encoder/layers_")})
    dec_layers = len({k.split("/")[1] for k in flat if k.startswith("decoder/layers_")})
    heads, buckets = need("encoder/relpos_bias/rel_embedding")
    d_kv = need("encoder/layers_0/attention/query/kernel")[1] // heads
    mlp = "encoder/layers_0/mlp/"
  gated = any(k.startswith(mlp + "wi_1/") for k in flat)
  d_ff = need(mlp + ("wi_0/kernel" if gated else "wi/kernel"))[-1]
  inferred = dict(vocab_size=vocab, d_model=d_model, d_ff=d_ff, num_heads=heads, d_kv=d_kv,
                  num_encoder_layers=layers, num_decoder_layers=dec_layers,
                  tie_embeddings="decoder/logits_dense/kernel" not in flat,
                  relative_attention_num_buckets=buckets, relpos_per_layer=scanned,
                  mlp_activations=("gelu", "linear") if gated else ("relu",))
  bound = gin.get_bindings("T5Config")
  for key, value in bound.items():
    if key in inferred and key != "mlp_activations" and value != inferred[key]:
      raise UserError(f"the T5X checkpoint does not match the gin config: it has T5Config.{key}={inferred[key]}, "
                      f"gin binds {value}")
  if "mlp_activations" in bound and (len(bound["mlp_activations"]) > 1) != gated:
    raise UserError(f"the T5X checkpoint has a {'gated' if gated else 'plain'} MLP; gin binds T5Config."
                    f"mlp_activations={tuple(bound['mlp_activations'])}")
  return T5Config(**{**inferred, **bound})


def _not_t5(key):
  raise UserError(f"not a T5 encoder-decoder T5X checkpoint: no parameter {key}")


def read_params(ckpt_dir: str, abstract_params, tree: dict | None = None, put=None) -> dict:
  """Our parameter tree (float32) with the shapes of `abstract_params`, reading one t5x array at a time;
  `put(name, array)` may place each (e.g. onto its devices) as it is read, so host memory holds one array,
  not the model."""
  tree = tree or read_tree(ckpt_dir)
  expected = traverse_util.flatten_dict(abstract_params, sep="/")
  sources = parameter_sources(tree["target"])
  missing = sorted(set(expected) - set(sources))
  if missing:
    raise UserError(f"the T5X checkpoint lacks {len(missing)} parameter(s) of the model, e.g. {missing[0]}")
  flat_target = _flat(tree["target"])
  cache = {}  # a stacked array serves every layer: read it once
  out = {}
  for name in sorted(expected, key=lambda n: sources[n][0]):
    abstract, (source, fn) = expected[name], sources[name]
    if source not in cache:
      cache.clear()
      cache[source] = read_array(ckpt_dir, flat_target[source], f"target/{source}")
    array = np.asarray(fn(cache[source]), np.float32)
    if array.shape != abstract.shape:
      raise UserError(f"T5X parameter {source} has shape {array.shape}; the model needs {abstract.shape} "
                      f"for {name}")
    out[name] = put(name, array) if put else array
  return traverse_util.unflatten_dict(out, sep="/")


# --- Adafactor state: t5x <-> optax ---

def read_opt_state(ckpt_dir: str, tree: dict, params: dict, tx):
  """t5x's Adafactor state (`v_row`/`v_col` for factored kernels, `v` otherwise, `step`) as `tx`'s optax state
  for `params`. For 2-D parameters t5x and optax factor alike (v_row averages the largest axis away, v_col the
  second largest), so the slots carry over as they are. Refuses what would not continue exactly (momentum, a
  different factoring threshold)."""
  state = tree.get("state") or {}
  if "param_states" not in state:
    raise UserError(f"the T5X checkpoint {ckpt_dir} has no optimizer state")
  if _scanned(_flat(tree["target"])):
    raise UserError("the optimizer state of a stacked-layer (scalable_t5) T5X checkpoint is not converted; "
                    "import without --with_optimizer_state")
  t5x_states = _flat(state["param_states"])
  opt_state = tx.init(params)  # factored: small beside the parameters
  factored = opt_state[0]
  ours_shape = {slot: {k: v.shape for k, v in traverse_util.flatten_dict(getattr(factored, slot), sep="/").items()}
                for slot in ("v_row", "v_col", "v")}
  converted = {"v_row": {}, "v_col": {}, "v": {}}
  for name, param in traverse_util.flatten_dict(params, sep="/").items():
    get = lambda slot: read_array(ckpt_dir, t5x_states[f"{name}/{slot}"], f"state/param_states/{name}/{slot}") \
        if f"{name}/{slot}" in t5x_states else _not_adafactor(name)
    if np.size(get("m")) > 1:
      raise UserError("the T5X run used Adafactor momentum (beta1); flan-jax's Adafactor has none, so its "
                      "state cannot be continued exactly")
    v_row, v_col, v = get("v_row"), get("v_col"), get("v")
    theirs = v_row.shape != (1,)
    ours = ours_shape["v_row"][name] != (1,)
    if theirs != ours:
      raise UserError(f"t5x {'factored' if theirs else 'did not factor'} the second moment of {name} "
                      f"{param.shape}, flan-jax's Adafactor would {'not' if theirs else ''} factor it: set "
                      f"--gin.adafactor.min_dim_size_to_factor to the t5x run's min_dim_size_to_factor")
    for slot, value in (("v_row", v_row), ("v_col", v_col), ("v", v)):
      if value.shape != ours_shape[slot][name]:
        raise UserError(f"T5X Adafactor state {name}/{slot} has shape {value.shape}; flan-jax's needs "
                        f"{ours_shape[slot][name]}")
      converted[slot][name] = np.asarray(value, np.float32)
  unflat = lambda d: traverse_util.unflatten_dict(d, sep="/")
  first = factored._replace(count=np.asarray(read_step(ckpt_dir, tree), np.int32),
                            **{k: unflat(v) for k, v in converted.items()})
  return (first,) + tuple(opt_state[1:])


def read_step(ckpt_dir: str, tree: dict) -> int:
  """The T5X train state's step (0 when the checkpoint holds no state)."""
  return int(np.asarray(read_array(ckpt_dir, (tree.get("state") or {}).get("step", 0), "state/step")))


def _not_adafactor(name):
  raise UserError(f"the T5X optimizer state has no Adafactor v_row/v_col/v/m for {name}; only t5x's Adafactor "
                  f"state converts")


# --- import: T5X -> flan-jax ---

def import_t5x(ckpt_dir: str, out_dir: str, vocabulary: str | None = None,
               with_optimizer_state: bool = False) -> str:
  """Write the T5X checkpoint at ckpt_dir as a flan-jax checkpoint (at the T5X step) at out_dir.

  With `with_optimizer_state`, t5x's Adafactor state becomes the optimizer state of `optim.adafactor()` (as gin
  configures it), so `flan-jax train` with out_dir as MODEL_DIR/checkpoints continues the t5x run. The model
  config is inferred from the shapes (see `infer_config`). Nothing is left at out_dir on failure.
  """
  from flan_jax.vocab import check_fits, fingerprint, sentencepiece_vocabulary
  out_dir = os.path.abspath(out_dir)
  checkpoints.check_new_dir(out_dir)
  tree = read_tree(ckpt_dir)
  config = infer_config(tree["target"])
  meta = {"model_config": config.to_dict(), "source": {"t5x": str(ckpt_dir)}}
  if vocabulary:
    if not os.path.isfile(vocabulary):
      raise UserError(f"no vocabulary: {vocabulary} not found")
    spm = sentencepiece_vocabulary(vocabulary)
    check_fits(spm, config.vocab_size)
    meta.update(vocabulary=os.path.abspath(vocabulary), vocabulary_fingerprint=fingerprint(spm))
  params = read_params(ckpt_dir, restore_target(config), tree)
  step = read_step(ckpt_dir, tree)
  opt_state = read_opt_state(ckpt_dir, tree, params, optim.adafactor()) if with_optimizer_state else None
  return checkpoints.write_new(out_dir, step, params, meta, vocabulary, opt_state)


# --- export: flan-jax -> T5X ---

def chunk_shape(shape: tuple, itemsize: int) -> list[int]:
  """t5x's chunking: each dimension a divisor of its size, the largest cut first, until a chunk is at most
  64 MiB."""
  divisors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
  while np.prod([d[-1] for d in divisors]) * itemsize > CHUNK_BYTES:
    largest = max(range(len(shape)), key=lambda i: divisors[i][-1])
    divisors[largest].pop()
  return [d[-1] for d in divisors]


def _write_array(out_dir: str, name: str, array: np.ndarray) -> dict:
  """Writes a zarr array as t5x does (gzip, t5x's chunks) and returns the spec the msgpack file keeps."""
  metadata = {"chunks": chunk_shape(array.shape, array.dtype.itemsize), "compressor": {"id": "gzip", "level": 1},
              "shape": list(array.shape)}
  dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
  relative = name.replace("/", ".") + "/"
  spec = {"driver": "zarr", "dtype": dtype, "kvstore": _kvstore(out_dir, relative), "metadata": metadata}
  ts.open(spec, create=True, open=True).result().write(array).result()
  return {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": relative}, "metadata": metadata}


def export_t5x(checkpoint: str, out_dir: str, with_optimizer_state: bool = False) -> str:
  """Write a flan-jax checkpoint as `out_dir/checkpoint_<step>/` in t5x's layout (examples/t5 network names;
  float32; Adafactor state from the checkpoint with `with_optimizer_state`, else t5x's fresh zero state).
  Returns the checkpoint_<step> path."""
  root, step, meta = checkpoints.read_meta(checkpoint)
  config = checkpoints.model_config(meta)
  if config.relpos_per_layer:
    raise UserError("this model has a relative-position bias per layer; t5x's examples/t5 layout shares one "
                    "per stack, so it is not exported")
  tx = optim.adafactor()
  abstract_params = restore_target(config)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_opt = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                              jax.eval_shape(tx.init, abstract_params)) if with_optimizer_state else None
  params, opt_state, _, step = checkpoints.restore(os.path.join(root, str(step)), abstract_params, abstract_opt)
  factored = (opt_state or tx.init(params))[0]
  slots_of = {slot: traverse_util.flatten_dict(getattr(factored, slot), sep="/") for slot in ("v_row", "v_col", "v")}
  final = os.path.join(os.path.abspath(out_dir), f"checkpoint_{step}")
  checkpoints.check_new_dir(final)
  flat = traverse_util.flatten_dict(params, sep="/")
  with checkpoints.atomic_dir(final) as tmp:
    target, states = {}, {}
    for name, value in flat.items():
      target[name] = _write_array(tmp, f"target/{name}", np.asarray(value))
      slots = {slot: np.asarray(by_name[name], np.float32) for slot, by_name in slots_of.items()}
      v = slots.pop("v")
      states[name] = {"m": np.zeros((1,), np.float32), **slots,
                      "v": v if v.shape == (1,) else _write_array(tmp, f"state/param_states/{name}/v", v)}
    tree = {"version": VERSION, "optimizer": {
        "target": traverse_util.unflatten_dict(target, sep="/"),
        "state": {"step": np.asarray(step, np.int32), "param_states": traverse_util.unflatten_dict(states, sep="/")}}}
    with open(os.path.join(tmp, CHECKPOINT_FILE), "wb") as f:
      f.write(serialization.msgpack_serialize(tree))
  return final


def restore_params(path: str, abstract_params) -> dict:
  """Parameters from a flan-jax or a T5X checkpoint, restored into `abstract_params` (shapes and shardings);
  a T5X checkpoint is read one array at a time, each placed on its devices as it is read."""
  if not is_t5x_checkpoint(path):
    return checkpoints.restore(path, abstract_params)[0]
  where = traverse_util.flatten_dict(abstract_params, sep="/")
  return read_params(path, abstract_params, put=lambda name, a: jax.device_put(a, where[name].sharding))

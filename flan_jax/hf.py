"""HuggingFace T5 folders <-> flan-jax checkpoints, without torch.

One table (`weight_map`) names, for a config, which HF tensor each of our parameters is and whether it is
transposed (torch Linear stores (out, in); our kernels are (in, out)); import and export both read it.
"""

import glob
import json
import os
import shutil

import numpy as np
from safetensors import safe_open

from flan_jax import checkpoints
from flan_jax.errors import UserError
from flan_jax.models import T5Config

# HF feed_forward_proj <-> our MLP activations. HF's gated-gelu uses gelu_new (tanh), as ours does.
HF_ACTIVATIONS = {
    "gated-gelu": ("gelu", "linear"),
    "relu": ("relu",),
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
    "silu": ("silu",),
}


def config_from_hf(hf: dict) -> T5Config:
  """Our T5Config from a HF config.json dict; raises UserError for what we cannot represent."""
  if hf.get("model_type") != "t5":
    raise UserError(f"not a T5 config: model_type is {hf.get('model_type')!r}, expected 't5'")
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in HF_ACTIVATIONS:
    raise UserError(f"unsupported feed_forward_proj {proj!r}; supported: {sorted(HF_ACTIVATIONS)}")
  # transformers 4 writes tie_word_embeddings=false for untied T5; transformers 5 writes scale_decoder_outputs.
  tied = hf.get("tie_word_embeddings", True) is not False and hf.get("scale_decoder_outputs", True) is not False
  try:
    return T5Config.from_dict(dict(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_ff=hf["d_ff"], num_heads=hf["num_heads"],
        d_kv=hf["d_kv"], num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        mlp_activations=HF_ACTIVATIONS[proj], tie_embeddings=tied,
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6)))
  except KeyError as e:
    raise UserError(f"T5 config.json lacks the key {e.args[0]!r}") from e


def weight_map(config: T5Config) -> dict[tuple, tuple[str, bool]]:
  """Our parameter path -> (HF tensor name, transposed?)."""
  m = {("token_embedder", "embedding"): ("shared.weight", False)}
  mlp_names = ["wi"] if len(config.mlp_activations) == 1 else [f"wi_{i}" for i in range(len(config.mlp_activations))]

  def attention(path, hf, kind):
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      m[path + (ours, "kernel")] = (f"{hf}.{kind}.{theirs}.weight", True)

  def mlp(path, hf):
    for name in mlp_names + ["wo"]:
      m[path + ("mlp", name, "kernel")] = (f"{hf}.DenseReluDense.{name}.weight", True)

  for stack, num_layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
    m[(stack, "relpos_bias", "rel_embedding")] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)
    m[(stack, f"{stack}_norm", "scale")] = (f"{stack}.final_layer_norm.weight", False)
    for i in range(num_layers):
      path, hf = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
      if stack == "encoder":
        sublayers = [("pre_attention_layer_norm", "attention", "SelfAttention")]
      else:
        sublayers = [("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
                     ("pre_cross_attention_layer_norm", "encoder_decoder_attention", "EncDecAttention")]
      for j, (norm, ours, kind) in enumerate(sublayers):
        m[path + (norm, "scale")] = (f"{hf}.{j}.layer_norm.weight", False)
        attention(path + (ours,), f"{hf}.{j}", kind)
      m[path + ("pre_mlp_layer_norm", "scale")] = (f"{hf}.{len(sublayers)}.layer_norm.weight", False)
      mlp(path, f"{hf}.{len(sublayers)}")
  if not config.tie_embeddings:
    m[("decoder", "logits_dense", "kernel")] = ("lm_head.weight", True)
  return m


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from e


def _open_tensors(hf_dir: str) -> dict:
  """name -> lazy loader, over model.safetensors or its shards. Refuses pickle-only folders."""
  files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not files:
    pickles = [os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.bin"))]
    if pickles:
      raise UserError(f"{hf_dir} holds only pickle weights ({', '.join(pickles)}); flan-jax reads safetensors "
                      "only. Convert with transformers: T5ForConditionalGeneration.from_pretrained(DIR)"
                      ".save_pretrained(DIR2, safe_serialization=True)")
    raise UserError(f"{hf_dir} has no model.safetensors")
  tensors = {}
  for path in files:
    handle = safe_open(path, framework="flax")
    for name in handle.keys():
      tensors[name] = (handle, name)
  return tensors


def _to_numpy(handle, name) -> np.ndarray:
  return np.asarray(handle.get_tensor(name), dtype=np.float32)


def read_hf(hf_dir: str) -> tuple[T5Config, dict]:
  """Config and float32 numpy parameter tree of a HF T5 folder; every shape is checked."""
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.isdir(hf_dir):
    raise UserError(f"HuggingFace folder not found: {hf_dir}")
  if not os.path.isfile(config_path):
    raise UserError(f"{hf_dir} has no config.json")
  config = config_from_hf(_read_json(config_path))
  tensors = _open_tensors(hf_dir)
  from flan_jax.models.t5 import abstract_variables  # jax import deferred: config errors come fast
  import flax.linen as nn
  import jax
  expected = {tuple(k.key for k in path): leaf.shape
              for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_variables(config))["params"])[0]}
  params = {}
  for path, (name, transpose) in weight_map(config).items():
    if name not in tensors:
      raise UserError(f"{hf_dir}: tensor {name} is missing (needed for {'/'.join(path)})")
    value = _to_numpy(*tensors[name])
    hf_shape = tuple(expected[path][::-1] if transpose else expected[path])
    if value.shape != hf_shape:
      raise UserError(f"{hf_dir}: tensor {name} has shape {tuple(value.shape)} but config.json implies {hf_shape}")
    if transpose:
      value = value.T
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  if config.tie_embeddings and "lm_head.weight" in tensors:
    if not np.array_equal(_to_numpy(*tensors["lm_head.weight"]), params["token_embedder"]["embedding"]):
      raise UserError(f"{hf_dir}: config says tied embeddings but lm_head.weight differs from shared.weight")
  return config, params


def import_hf(hf_dir: str, out_dir: str, vocabulary: str | None = None) -> str:
  """Write the HF model at hf_dir as a flan-jax checkpoint (step 0) at out_dir. Returns out_dir.

  The vocabulary is hf_dir/spiece.model unless given; it is copied beside the checkpoint. Written to a
  temporary sibling directory and renamed at the end, so a failure leaves nothing at out_dir.
  """
  out_dir = os.path.abspath(out_dir)
  checkpoints.check_new_dir(out_dir)
  config, params = read_hf(hf_dir)
  vocabulary = vocabulary or os.path.join(hf_dir, checkpoints.VOCAB_FILE)
  if not os.path.isfile(vocabulary):
    raise UserError(f"no vocabulary: {vocabulary} not found (pass --vocab PATH to spiece.model)")
  from flan_jax.vocab import check_fits, fingerprint, sentencepiece_vocabulary
  spm = sentencepiece_vocabulary(vocabulary)
  check_fits(spm, config.vocab_size)
  meta = {"model_config": config.to_dict(), "vocabulary": os.path.abspath(vocabulary),
          "vocabulary_fingerprint": fingerprint(spm), "source": {"huggingface": os.path.abspath(hf_dir)}}
  return checkpoints.write_new(out_dir, 0, params, meta, vocabulary)


# --- export ---

def config_to_hf(config: T5Config) -> dict:
  """HF config.json for our config; UserError when HF's T5 has no equivalent."""
  if config.relpos_per_layer:
    raise UserError("this model has a relative-position bias per layer (t5x scalable_t5); HuggingFace's T5 "
                    "shares one per stack, so it cannot be exported to HuggingFace")
  proj = next((name for name, acts in HF_ACTIVATIONS.items() if acts == config.mlp_activations), None)
  if proj is None:
    raise UserError(f"MLP activations {config.mlp_activations} have no HuggingFace T5 equivalent "
                    f"(supported: {sorted(HF_ACTIVATIONS.values())})")
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.d_model, "d_ff": config.d_ff, "d_kv": config.d_kv,
      "num_heads": config.num_heads, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers, "feed_forward_proj": proj,
      "is_gated_act": proj.startswith("gated-"), "dense_act_fn": "gelu_new" if proj == "gated-gelu" else proj.split("-")[-1],
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0, "is_encoder_decoder": True, "use_cache": True,
      # transformers 4 reads tie_word_embeddings, transformers 5 scale_decoder_outputs; write both explicitly.
      "tie_word_embeddings": config.tie_embeddings, "scale_decoder_outputs": config.tie_embeddings,
      "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
  }


def _tokenizer_files(vocabulary_kind: str) -> dict:
  specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
  if vocabulary_kind == "bytes":
    config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0, **specials}
    return {"tokenizer_config.json": config, "special_tokens_map.json": specials}
  extra = [f"<extra_id_{i}>" for i in range(100)]
  config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 100, "model_max_length": 512,
            "additional_special_tokens": extra, "clean_up_tokenization_spaces": False, **specials}
  return {"tokenizer_config.json": config, "special_tokens_map.json": {**specials, "additional_special_tokens": extra}}


def write_safetensors(path: str, shapes: dict, tensors, metadata: dict | None = None) -> None:
  """A float32 safetensors file written one tensor at a time: `shapes` maps name -> shape (the header comes
  first), `tensors` yields (name, array) in the order of `shapes`. Host memory holds one tensor at a time."""
  header, offset = {"__metadata__": metadata} if metadata else {}, 0
  for name, shape in shapes.items():
    size = 4 * int(np.prod(shape))
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text)
    for (name, shape), (got, value) in zip(shapes.items(), tensors):
      if got != name or tuple(value.shape) != tuple(shape) or value.dtype != np.float32:
        raise ValueError(f"tensor {got} {value.shape} {value.dtype} does not match the header's {name} {shape}")
      f.write(np.ascontiguousarray(value).tobytes())


def export_hf(checkpoint: str, out_dir: str, mesh=None, merge: bool = False) -> str:
  """A flan-jax checkpoint as a HuggingFace T5 folder: config.json, model.safetensors (float32),
  generation_config.json and tokenizer files. Written to a temporary sibling and renamed when complete.
  A LoRA checkpoint exports with `merge` only: the adapters folded into their kernels (peft's merge_and_unload).

  The parameters are restored sharded over `mesh` (or on one device) and gathered to the host one at a time;
  with several processes, process 0 writes."""
  import jax
  from jax.experimental import multihost_utils

  from flan_jax import partitioning

  from flan_jax import lora
  root, step, meta = checkpoints.read_meta(checkpoint)
  config = checkpoints.model_config(meta)
  if bool(config.lora_rank) != merge:
    raise UserError("a LoRA checkpoint exports as a peft adapter (--adapter) or merged (--merge)" if config.lora_rank
                    else f"{root}/{step} has no LoRA adapters to merge")
  hf_config = config_to_hf(lora.base_config(config))
  vocab_id = meta.get("vocabulary_fingerprint", "")
  spiece = checkpoints.vocabulary_path(root, meta)
  kind = "bytes" if vocab_id.startswith("ByteVocabulary") else "sentencepiece"
  if kind == "sentencepiece" and not (spiece and os.path.isfile(spiece)):
    raise UserError(f"checkpoint {root}/{step} has no SentencePiece vocabulary to export (looked for {spiece})")
  out_dir = os.path.abspath(out_dir)
  checkpoints.check_new_dir(out_dir)
  params = lora.load_params(root, step, meta, config, mesh)
  lora_config, config = config, lora.base_config(config)
  target = partitioning.restore_target(config)
  entries = sorted((name, path, transpose) for path, (name, transpose) in weight_map(config).items())

  def leaf(tree, path):
    for key in path:
      tree = tree[key]
    return tree

  shapes = {name: leaf(target, path).shape[::-1] if transpose else leaf(target, path).shape
            for name, path, transpose in entries}

  gathered = lambda path: np.asarray(multihost_utils.process_allgather(leaf(params, path), tiled=True), np.float32)

  def tensors():
    for name, path, transpose in entries:
      value = gathered(path)
      if "lora_a" in leaf(params, path[:-1]):
        value = lora.fold(value, gathered(path[:-1] + ("lora_a",)), gathered(path[:-1] + ("lora_b",)), lora_config)
      yield name, value.T if transpose else value

  if jax.process_index() != 0:
    for _ in tensors():  # the gathers are collective: take part, write nothing
      pass
    return out_dir
  files = {"config.json": hf_config,
           "generation_config.json": {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0},
           **_tokenizer_files(kind)}
  with checkpoints.atomic_dir(out_dir) as tmp:
    write_safetensors(os.path.join(tmp, "model.safetensors"), shapes, tensors(), metadata={"format": "pt"})
    for name, content in files.items():
      with open(os.path.join(tmp, name), "w") as f:
        json.dump(content, f, indent=2)
    if kind == "sentencepiece":
      shutil.copyfile(spiece, os.path.join(tmp, checkpoints.VOCAB_FILE))
  return out_dir

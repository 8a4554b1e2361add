"""LoRA adapters: which parameters train, the frozen base they sit on, folding them into their kernels, and
peft's adapter folder (adapter_config.json + adapter_model.safetensors) in and out.

The adapters live beside each targeted kernel (`.../query/lora_a` (in, r), `.../query/lora_b` (r, out)); a LoRA
checkpoint holds only them (and their optimizer state) and records its base in meta["lora_base"].
"""

import dataclasses
import json
import os
import shutil

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from flan_jax import checkpoints, partitioning, t5x
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.models.t5 import PEFT_NAMES, lora_scale

ADAPTERS = ("lora_a", "lora_b")
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def split(params: dict) -> tuple[dict, dict]:
  """(adapters, base) of a LoRA model's parameter tree."""
  flat = traverse_util.flatten_dict(params)
  pick = lambda keep: traverse_util.unflatten_dict({k: v for k, v in flat.items() if (k[-1] in ADAPTERS) == keep})
  return pick(True), pick(False)


def combine(base: dict | None, adapters: dict) -> dict:
  """The full parameter tree from the frozen base and the adapters (without a base: the parameters as given)."""
  if base is None:
    return adapters
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(base), **traverse_util.flatten_dict(adapters)})


def base_config(config: T5Config) -> T5Config:
  return dataclasses.replace(config, lora_rank=None)


def fold(kernel, a, b, config: T5Config) -> np.ndarray:
  """A kernel with its adapter folded in: W + A B * scale (peft's merge_and_unload), in float32."""
  f32 = lambda x: np.asarray(x, np.float32)
  return f32(kernel) + (f32(a) @ f32(b)) * np.float32(lora_scale(config))


def load_params(root: str, step: int, meta: dict, config: T5Config, mesh=None) -> dict:
  """A checkpoint's full parameters, sharded over `mesh` (or on one device): a plain checkpoint's, or a LoRA
  checkpoint's adapters combined with its base."""
  target = partitioning.restore_target(config, mesh)
  if not config.lora_rank:
    return checkpoints.restore(os.path.join(root, str(step)), target)[0]
  adapters_target, base_target = split(target)
  base_path = meta.get("lora_base")
  if not base_path:
    raise UserError(f"LoRA checkpoint {root}/{step} names no base (meta lora_base)")
  adapters = checkpoints.restore(os.path.join(root, str(step)), adapters_target)[0]
  return combine(t5x.restore_params(base_path, base_target), adapters)


# --- peft's adapter folder ---

def _peft_names(config: T5Config) -> dict:
  """Our adapter path -> peft's tensor name (base_model.model.<HF module>.lora_A.weight)."""
  from flan_jax.hf import weight_map
  names = {}
  for path, (hf_name, _) in weight_map(base_config(config)).items():
    if path[-1] != "kernel":
      continue
    module = "base_model.model." + hf_name[: -len(".weight")]
    names[path[:-1] + ("lora_a",)] = f"{module}.lora_A.weight"
    names[path[:-1] + ("lora_b",)] = f"{module}.lora_B.weight"
  return names


def export_peft(checkpoint: str, out_dir: str, base_name_or_path: str | None = None) -> str:
  """A LoRA checkpoint as a peft adapter folder for transformers' T5ForConditionalGeneration."""
  from flan_jax.hf import write_safetensors
  root, step, meta = checkpoints.read_meta(checkpoint)
  config = checkpoints.model_config(meta)
  if not config.lora_rank:
    raise UserError(f"{root}/{step} is not a LoRA checkpoint: export-hf without --adapter writes the model")
  out_dir = os.path.abspath(out_dir)
  checkpoints.check_new_dir(out_dir)
  adapters_target, _ = split(partitioning.restore_target(config))
  adapters = traverse_util.flatten_dict(checkpoints.restore(os.path.join(root, str(step)), adapters_target)[0])
  names = _peft_names(config)
  tensors = sorted((names[path], np.asarray(value, np.float32).T) for path, value in adapters.items())
  adapter_config = {
      "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": config.lora_rank, "lora_alpha": config.lora_alpha,
      "lora_dropout": config.lora_dropout, "target_modules": sorted(config.lora_targets), "bias": "none",
      "fan_in_fan_out": False, "use_rslora": config.lora_use_rslora, "inference_mode": True,
      "base_model_name_or_path": base_name_or_path or meta.get("lora_base"), "modules_to_save": None,
      "init_lora_weights": True}
  with checkpoints.atomic_dir(out_dir) as tmp:
    write_safetensors(os.path.join(tmp, PEFT_FILES[1]), {n: v.shape for n, v in tensors}, iter(tensors),
                      metadata={"format": "pt"})
    with open(os.path.join(tmp, PEFT_FILES[0]), "w") as f:
      json.dump(adapter_config, f, indent=2)
  return out_dir


def import_peft(adapter_dir: str, base: str, out_dir: str) -> str:
  """A peft LoRA adapter folder on the flan-jax checkpoint `base` as a flan-jax LoRA checkpoint (step 0)."""
  missing = [f for f in PEFT_FILES if not os.path.isfile(os.path.join(adapter_dir, f))]
  if missing:
    raise UserError(f"{adapter_dir} is not a peft adapter folder: no {missing[0]}")
  with open(os.path.join(adapter_dir, PEFT_FILES[0])) as f:
    peft = json.load(f)
  if peft.get("peft_type") != "LORA" or peft.get("bias", "none") != "none" or peft.get("fan_in_fan_out"):
    raise UserError(f"{adapter_dir}: only peft LoRA adapters without biases and with fan_in_fan_out false import")
  targets = peft.get("target_modules") or []
  if not isinstance(targets, list):
    raise UserError(f"{adapter_dir}: target_modules {targets!r} is a pattern; only a list of module names imports")
  base_root, _, base_meta = checkpoints.read_meta(base)
  config = dataclasses.replace(
      checkpoints.model_config(base_meta), lora_rank=peft["r"], lora_alpha=float(peft["lora_alpha"]),
      lora_dropout=float(peft.get("lora_dropout", 0.0)), lora_targets=tuple(sorted(targets)),
      lora_use_rslora=bool(peft.get("use_rslora", False)))
  tensors = load_file(os.path.join(adapter_dir, PEFT_FILES[1]))
  adapters = {}
  for path, name in _peft_names(config).items():
    if PEFT_NAMES.get(path[-2]) not in config.lora_targets:
      continue
    if name not in tensors:
      raise UserError(f"{adapter_dir}: the adapter lacks {name}")
    adapters[path] = tensors[name].astype(np.float32).T
  expected = traverse_util.flatten_dict(split(partitioning.restore_target(config))[0])
  for path, abstract in expected.items():
    if path not in adapters or adapters[path].shape != abstract.shape:
      got = adapters[path].shape if path in adapters else None
      raise UserError(f"the adapter does not fit the base {base}: {'/'.join(path)} is {got}, the base needs "
                      f"{abstract.shape}")
  meta = {**base_meta, "model_config": config.to_dict(), "lora_base": os.path.abspath(base),
          "source": {"peft": os.path.abspath(adapter_dir)}}
  out_dir = os.path.abspath(out_dir)
  checkpoints.check_new_dir(out_dir)
  vocabulary = checkpoints.vocabulary_path(base_root, base_meta)
  with checkpoints.atomic_dir(out_dir) as tmp:
    if vocabulary and os.path.isfile(vocabulary):
      shutil.copyfile(vocabulary, os.path.join(tmp, checkpoints.VOCAB_FILE))
    with checkpoints.manager(tmp) as mngr:
      checkpoints.save(mngr, 0, traverse_util.unflatten_dict(adapters), meta)
  return out_dir

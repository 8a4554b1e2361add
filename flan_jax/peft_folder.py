"""peft's LoRA adapter folder (adapter_config.json + adapter_model.safetensors) in and out, with peft's tensor
names for transformers' T5ForConditionalGeneration."""

import dataclasses
import json
import os

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from flan_jax import checkpoints, lora, partitioning
from flan_jax.errors import UserError
from flan_jax.hf import weight_map, write_safetensors
from flan_jax.models import T5Config
from flan_jax.models.t5 import PEFT_NAMES

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _peft_names(config: T5Config) -> dict:
  """Our adapter path -> peft's tensor name (base_model.model.<HF module>.lora_A.weight)."""
  names = {}
  for path, (hf_name, _) in weight_map(lora.base_config(config)).items():
    if path[-1] != "kernel":
      continue
    module = "base_model.model." + hf_name[: -len(".weight")]
    names[path[:-1] + ("lora_a",)] = f"{module}.lora_A.weight"
    names[path[:-1] + ("lora_b",)] = f"{module}.lora_B.weight"
  return names


def export_peft(checkpoint: str, out_dir: str, base_name_or_path: str | None = None) -> str:
  """A LoRA checkpoint as a peft adapter folder for transformers' T5ForConditionalGeneration."""
  root, step, meta = checkpoints.read_meta(checkpoint)
  config = checkpoints.model_config(meta)
  if not config.lora_rank:
    raise UserError(f"{root}/{step} is not a LoRA checkpoint: export-hf without --adapter writes the model")
  out_dir = os.path.abspath(out_dir)
  checkpoints.check_new_dir(out_dir)
  adapters_target, _ = lora.split(partitioning.restore_target(config))
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
  expected = traverse_util.flatten_dict(lora.split(partitioning.restore_target(config))[0])
  for path, abstract in expected.items():
    if path not in adapters or adapters[path].shape != abstract.shape:
      got = adapters[path].shape if path in adapters else None
      raise UserError(f"the adapter does not fit the base {base}: {'/'.join(path)} is {got}, the base needs "
                      f"{abstract.shape}")
  meta = {**base_meta, "model_config": config.to_dict(), "lora_base": os.path.abspath(base),
          "source": {"peft": os.path.abspath(adapter_dir)}}
  vocabulary = checkpoints.vocabulary_path(base_root, base_meta)
  return checkpoints.write_new(out_dir, 0, traverse_util.unflatten_dict(adapters), meta,
                               vocabulary if vocabulary and os.path.isfile(vocabulary) else None)

"""LoRA adapters: which parameters train, the frozen base they sit on, and folding them into their kernels
(peft's adapter folder in and out: flan_jax.peft_folder).

The adapters live beside each targeted kernel (`.../query/lora_a` (in, r), `.../query/lora_b` (r, out)); a LoRA
checkpoint holds only them (and their optimizer state) and records its base in meta["lora_base"].
"""

import dataclasses
import os

import numpy as np
from flax import traverse_util

from flan_jax import checkpoints, partitioning, t5x
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.models.t5 import lora_scale

ADAPTERS = ("lora_a", "lora_b")


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

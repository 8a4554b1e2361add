"""Per-device memory of parameters, gradients and Adafactor state for a model size on a mesh, computed from
`jax.eval_shape` and the partitioning rules: nothing is allocated, so it runs anywhere for any size.

    .venv/bin/python scripts/plan_memory.py                      # the README's table (xl, xxl on TPU and GPU)
    .venv/bin/python scripts/plan_memory.py --size xxl --mesh 4x16 --device_gib 16

Activations come on top: they scale with the per-device batch and the sequence lengths (use
T5Config.remat = True, gradient accumulation with StepConfig.num_microbatches, and bfloat16 activations to cut them).
"""

import argparse

import flax.linen as nn
import jax

from flan_jax import gin_utils, partitioning
from flan_jax.models import T5Config
from flan_jax.models.t5 import abstract_variables
from flan_jax.optim import adafactor

GIB = 1024 ** 3

# (size, slice, mesh data x model, memory per device in GiB)
RECOMMENDED = [
    ("xl", "TPU v4-64 (32 chips)", (8, 4), 32), ("xl", "TPU v5e-64", (16, 4), 16), ("xl", "8 x 80 GB GPU", (8, 1), 80),
    ("xxl", "TPU v4-64 (32 chips)", (4, 8), 32), ("xxl", "TPU v5e-64", (4, 16), 16), ("xxl", "8 x 80 GB GPU", (1, 8), 80),
]


def plan(size: str, data: int, model: int) -> dict:
  gin_utils.parse([f"models/{size}.gin"], [])
  config = T5Config()
  boxed = abstract_variables(config)["params"]
  params = nn.unbox(boxed)
  specs = partitioning.param_specs(boxed)
  opt_state = jax.eval_shape(adafactor().init, params)
  mesh = {"data": data, "model": model}
  p = partitioning.per_device_bytes(params, specs, mesh)
  o = partitioning.per_device_bytes(opt_state, partitioning.opt_state_specs(opt_state, params, specs), mesh)
  total_params = sum(x.size for x in jax.tree.leaves(params))
  return {"params": p, "grads": p, "opt_state": o, "total": 2 * p + o, "count": total_params}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size")
  parser.add_argument("--mesh", help="DATAxMODEL, e.g. 4x16")
  parser.add_argument("--device_gib", type=float, default=16)
  args = parser.parse_args()
  rows = RECOMMENDED
  if args.size:
    data, model = (int(x) for x in args.mesh.split("x"))
    rows = [(args.size, "given", (data, model), args.device_gib)]
  print("| size | hardware | mesh data x model | params / device | grads | Adafactor state | total | of device memory |")
  print("|---|---|---|---:|---:|---:|---:|---:|")
  for size, hardware, (data, model), gib in rows:
    r = plan(size, data, model)
    print(f"| {size} ({r['count'] / 1e9:.2f}B) | {hardware} | {data} x {model} | {r['params'] / GIB:.2f} GiB | "
          f"{r['grads'] / GIB:.2f} GiB | {r['opt_state'] / GIB:.3f} GiB | {r['total'] / GIB:.2f} GiB | "
          f"{r['total'] / (gib * GIB):.0%} of {gib:g} GiB |")


if __name__ == "__main__":
  main()

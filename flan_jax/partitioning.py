"""The device mesh, t5x's logical axis rules, and shardings for parameters, optimizer state and batches."""

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flan_jax.errors import UserError

# t5x's standard rules: batch over 'data'; vocab, mlp, heads, joined_kv over 'model'; the rest replicated.
LOGICAL_AXIS_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
)


@gin.configurable
def make_mesh(data_parallel: int = -1, model_parallel: int = 1) -> Mesh:
  """Mesh(('data', 'model')) over the first data x model devices; data_parallel=-1 takes all the rest."""
  devices = jax.devices()
  if model_parallel < 1 or len(devices) % model_parallel:
    raise UserError(f"model_parallel={model_parallel} does not divide the {len(devices)} devices")
  if data_parallel == -1:
    data_parallel = len(devices) // model_parallel
  if data_parallel < 1 or data_parallel * model_parallel > len(devices):
    raise UserError(f"mesh {data_parallel}x{model_parallel} needs {data_parallel * model_parallel} devices; "
                    f"{len(devices)} available")
  grid = np.array(devices[:data_parallel * model_parallel]).reshape(data_parallel, model_parallel)
  return Mesh(grid, ("data", "model"))


def axis_rules():
  """Context in which the model's logical constraints resolve to mesh axes."""
  return nn.logical_axis_rules(LOGICAL_AXIS_RULES)


def param_specs(boxed_abstract):
  """Mesh PartitionSpecs of a tree of LogicallyPartitioned abstract values (from jax.eval_shape of init)."""
  return nn.logical_to_mesh(nn.get_partition_spec(boxed_abstract), LOGICAL_AXIS_RULES)


def param_shardings(boxed_abstract, mesh: Mesh):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(boxed_abstract),
                      is_leaf=lambda x: isinstance(x, P))


def opt_state_specs(abstract_opt_state, abstract_params, specs):
  """Optimizer-state PartitionSpecs derived from the parameters'.

  Optimizer states hold trees shaped like the parameters (Adafactor: full moments, or factored row/column
  statistics whose shape drops one dimension). A full-shape leaf is sharded like its parameter, a factored
  one like it minus the dropped axis; everything else (step counts, placeholders) is replicated.
  """
  param_def = jax.tree.structure(abstract_params)

  def leaf_spec(leaf, param, spec):
    shape, pshape = tuple(leaf.shape), tuple(param.shape)
    full = tuple(spec) + (None,) * (len(pshape) - len(spec))
    if shape == pshape:
      return P(*full)
    for drop in range(len(pshape)):
      if len(shape) + 1 == len(pshape) and pshape[:drop] + pshape[drop + 1:] == shape:
        return P(*(full[:drop] + full[drop + 1:]))
    return P()

  def spec_tree(node):
    if jax.tree.structure(node) == param_def:
      return jax.tree.map(leaf_spec, node, abstract_params, specs, is_leaf=lambda x: isinstance(x, P))
    return jax.tree.map(lambda _: P(), node)

  return jax.tree.map(spec_tree, abstract_opt_state, is_leaf=lambda n: jax.tree.structure(n) == param_def)


def opt_state_shardings(abstract_opt_state, abstract_params, params_shardings, mesh: Mesh):
  specs = jax.tree.map(lambda s: s.spec, params_shardings)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      opt_state_specs(abstract_opt_state, abstract_params, specs), is_leaf=lambda x: isinstance(x, P))


def per_device_bytes(abstract_tree, specs, mesh_shape: dict) -> int:
  """Bytes one device holds of a sharded tree: each dimension divided (rounded up) by its mesh axes."""
  total = 0
  for leaf, spec in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
    shape = list(leaf.shape)
    for i, axes in enumerate(spec):
      for axis in (axes if isinstance(axes, tuple) else (axes,)):
        if axis:
          shape[i] = -(-shape[i] // mesh_shape[axis])
    total += int(np.prod(shape)) * leaf.dtype.itemsize
  return total


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  data = mesh.shape["data"]
  if batch_size % data:
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the data-parallel size {data}")
  if batch_size % jax.process_count():
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the {jax.process_count()} processes")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows -> one global jax.Array per feature, sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}

"""The device mesh, t5x's logical axis rules, and shardings for parameters, optimizer state and batches."""

import dataclasses

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
def make_mesh(data_parallel: int = -1, model_parallel: int = 1, minor_axis: str = "model", devices=None) -> Mesh:
  """Mesh(('data', 'model')) over the first data x model devices; data_parallel=-1 takes all the rest.

  `minor_axis` is the axis along which consecutive devices (jax.devices(): by process, then local id) run:
  'model' keeps each model-parallel group on as few hosts as possible; 'data' spreads it across hosts.
  `devices` (default: jax.devices()) may be a TPU topology's, for compiling without the hardware.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model_parallel < 1 or len(devices) % model_parallel:
    raise UserError(f"model_parallel={model_parallel} does not divide the {len(devices)} devices")
  if data_parallel == -1:
    data_parallel = len(devices) // model_parallel
  if data_parallel < 1 or data_parallel * model_parallel > len(devices):
    raise UserError(f"mesh {data_parallel}x{model_parallel} needs {data_parallel * model_parallel} devices; "
                    f"{len(devices)} available")
  if minor_axis not in ("model", "data"):
    raise UserError(f"make_mesh.minor_axis must be 'model' or 'data', got {minor_axis!r}")
  grid = np.array(devices[:data_parallel * model_parallel])
  grid = (grid.reshape(data_parallel, model_parallel) if minor_axis == "model" else
          grid.reshape(model_parallel, data_parallel).T)
  return Mesh(grid, ("data", "model"))


@gin.configurable
def logical_axis_rules(parameters_over_data: bool = False) -> tuple:
  """t5x's standard rules; with `parameters_over_data`, also the parameters' embed axis over 'data' (t5x's 2-D
  parameter partitioning, FSDP-like): each chip keeps 1/(data x model) of the weights and optimizer state and
  XLA gathers them where they are used. An activation's embed axis stays unsharded: its batch holds 'data'
  already, and flax then takes the next rule for embed."""
  if not parameters_over_data:
    return LOGICAL_AXIS_RULES
  return (("batch", "data"), ("embed", "data")) + LOGICAL_AXIS_RULES[1:]


def axis_rules():
  """Context in which the model's logical constraints resolve to mesh axes."""
  return nn.logical_axis_rules(logical_axis_rules())


def param_specs(boxed_abstract):
  """Mesh PartitionSpecs of a tree of LogicallyPartitioned abstract values (from jax.eval_shape of init)."""
  return nn.logical_to_mesh(nn.get_partition_spec(boxed_abstract), logical_axis_rules())


def param_shardings(boxed_abstract, mesh: Mesh):
  specs = param_specs(boxed_abstract)
  check_divisible(nn.unbox(boxed_abstract), specs, dict(mesh.shape))
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))


def check_divisible(abstract_params, specs, mesh_shape: dict) -> None:
  """Every sharded dimension must split evenly over its mesh axes (e.g. heads over 'model')."""
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0], flat_specs):
    for dim, axes in zip(leaf.shape, spec):
      ways = int(np.prod([mesh_shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)) if a]))
      if dim % ways:
        name = "/".join(str(_key(k)) for k in path)
        raise UserError(f"{name} has a dimension of {dim}, which the mesh's {spec} cannot split {ways} ways: "
                        f"choose a model_parallel that divides heads, d_ff and the vocabulary")


def factored_dims(shape) -> tuple[int, int]:
  """(d1, d0): the second-largest and largest axes, as optax's factored Adafactor picks them (a stable argsort,
  so a square kernel gives (0, 1)). Its v_row drops d0, its v_col drops d1."""
  order = np.argsort(shape, kind="stable")
  return int(order[-2]), int(order[-1])


def opt_state_specs(abstract_opt_state, abstract_params, specs):
  """Optimizer-state PartitionSpecs derived from the parameters'.

  A leaf under a parameter's path that has the parameter's shape (full moments) is sharded like it; Adafactor's
  factored statistics are sharded like the parameter minus the axis optax factored away (read from the state's
  field, v_row or v_col, not guessed from shapes: for a square kernel both axes would match); everything else
  (step counts, placeholders) is replicated.
  """
  param_leaves = {tuple(_key(k) for k in path): (leaf, spec) for (path, leaf), spec in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0],
      jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))}

  def leaf_spec(path, leaf):
    names = [_key(k) for k in path]
    fields = [i for i, k in enumerate(path) if isinstance(k, jax.tree_util.GetAttrKey)]
    field = names[fields[-1]] if fields else None
    param = tuple(names[fields[-1] + 1:]) if fields else tuple(names)
    if param not in param_leaves:
      return P()
    pleaf, spec = param_leaves[param]
    shape, pshape = tuple(leaf.shape), tuple(pleaf.shape)
    full = tuple(spec) + (None,) * (len(pshape) - len(spec))
    if shape == pshape:
      return P(*full)
    if field in ("v_row", "v_col") and len(pshape) >= 2:
      d1, d0 = factored_dims(pshape)
      drop = d0 if field == "v_row" else d1
      if pshape[:drop] + pshape[drop + 1:] == shape:
        return P(*(full[:drop] + full[drop + 1:]))
    return P()

  return jax.tree_util.tree_map_with_path(leaf_spec, abstract_opt_state)


def _key(k):
  return getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))


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


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which rows of every global batch this process reads and feeds (t5x's get_data_layout).

  A process feeds the rows of the 'data' positions its devices hold. Processes holding the same positions (the
  'model' axis spans them) read the same data shard, so their replicas of a row agree; the global batch is
  exactly `batch_size` rows on every mesh.
  """
  batch_size: int    # rows of the global batch
  shard_index: int   # the data shard this process reads
  num_shards: int    # distinct data shards over all processes
  rows: int          # rows this process feeds per global batch

  @property
  def shard_info(self):
    import seqio
    return seqio.ShardInfo(index=self.shard_index, num_shards=self.num_shards)


def data_layout(mesh: Mesh, batch_size: int) -> DataLayout:
  data = mesh.shape["data"]
  if batch_size % data:
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the data-parallel size {data}")
  held = {}
  for (position, _), device in np.ndenumerate(mesh.devices):
    held.setdefault(device.process_index, set()).add(position)
  missing = sorted(set(range(jax.process_count())) - set(held))
  blocks = {p: tuple(sorted(positions)) for p, positions in held.items()}
  distinct = sorted(set(blocks.values()))
  regular = (not missing and len({len(b) for b in distinct}) == 1 and
             all(b == tuple(range(b[0], b[-1] + 1)) for b in distinct) and
             len({i for b in distinct for i in b}) == sum(len(b) for b in distinct))
  if not regular:
    raise UserError(
        f"the mesh data={data} x model={mesh.shape['model']} cannot be laid out over {jax.process_count()} "
        f"processes: each process must hold a contiguous block of 'data' positions, the same size for all, "
        f"shared whole or not at all (held: {dict(sorted(blocks.items()))}"
        + (f"; processes {missing} hold no device of the mesh)" if missing else ")"))
  mine = blocks[jax.process_index()]
  return DataLayout(batch_size, distinct.index(mine), len(distinct), batch_size // data * len(mine))


def global_array(local, mesh: Mesh, layout: DataLayout) -> jax.Array:
  """This process's rows of a batch -> the global jax.Array, sharded over 'data'; the shape is checked."""
  if local.shape[0] != layout.rows:
    raise ValueError(f"this process fed {local.shape[0]} rows, its data layout says {layout.rows}")
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local, (layout.batch_size,) + local.shape[1:])


def global_batch(local_batch: dict, mesh: Mesh, layout: DataLayout) -> dict:
  return {k: global_array(v, mesh, layout) for k, v in local_batch.items()}


def restore_target(config, mesh: Mesh | None = None):
  """Abstract parameters to restore into: sharded over `mesh` by the logical rules, or on this process's first
  device; either way independent of the mesh the checkpoint was written on."""
  from flan_jax.models.t5 import abstract_variables
  boxed = abstract_variables(config)["params"]
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, nn.unbox(boxed))
  else:
    shardings = param_shardings(boxed, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)

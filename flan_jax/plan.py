"""`flan-jax plan`: does the run fit? Compiles the exact train step `flan-jax train` would run for named Cloud
TPU topologies, on any machine (JAX compiles "deviceless" for a topology once libtpu is installed), and reads
per-chip memory and FLOPs from the compiler instead of estimating them.
"""

import dataclasses
import itertools
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from flan_jax import partitioning, trainer
from flan_jax.errors import UserError
from flan_jax.settings import CheckpointConfig, DatasetConfig, EvalConfig, StepConfig

GIB = 2**30

# Chip generation -> (HBM per chip in GiB, peak bfloat16 TFLOP/s, HBM GB/s per chip), from Cloud TPU's
# documentation.
CHIPS = {"v4": (32, 275, 1200), "v5e": (16, 197, 819), "v5p": (95, 459, 2765), "v6e": (32, 918, 1640)}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str              # the Cloud TPU name, e.g. v5e-64
  topology: str          # libtpu's topology, e.g. v5e:8x8
  chip_config: str       # 'megacore' (v4, v5p: one device per chip) or 'default'
  wrap: tuple
  host_bounds: tuple = (2, 2, 1)  # chips per host: 4, or 8 on a single-host v5e-8 / v6e-8

  @property
  def generation(self) -> str:
    return self.name.split("-")[0]

  @property
  def hbm_gib(self) -> int:
    return CHIPS[self.generation][0]

  @property
  def peak_tflops(self) -> int:
    return CHIPS[self.generation][1]

  @property
  def hbm_gbps(self) -> int:
    return CHIPS[self.generation][2]


def _table() -> dict:
  """MaxText's topology names for v4, v5e, v5p and v6e slices (4 chips a host)."""
  shapes3d = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8", 512: "4x8x8",
              1024: "8x8x8", 2048: "8x8x16", 4096: "8x16x16"}
  shapes2d = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
  table = {}
  for generation, prefix in (("v4", "v4"), ("v5p", "v5")):
    for cores, shape in shapes3d.items():
      wrap = (True, True, True) if cores >= 128 else (False, False, False)
      table[f"{generation}-{cores}"] = Topology(f"{generation}-{cores}", f"{prefix}:{shape}", "megacore", wrap)
  for generation in ("v5e", "v6e"):
    for chips, shape in shapes2d.items():
      wrap = (True, True, False) if chips == 256 else (False, True, False) if chips == 128 else (False, False, False)
      table[f"{generation}-{chips}"] = Topology(f"{generation}-{chips}", f"{generation}:{shape}", "default", wrap,
                                                (2, 4, 1) if chips == 8 else (2, 2, 1))
  return table


TOPOLOGIES = _table()


def topology_devices(name: str):
  """The devices of a named slice, for compiling only (no TPU needed, but libtpu's compiler is)."""
  import importlib.util
  if name not in TOPOLOGIES:
    raise UserError(f"unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}")
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("flan-jax plan needs the TPU compiler (libtpu): .venv/bin/pip install -e '.[tpu]'")
  from jax.experimental import topologies
  t = TOPOLOGIES[name]
  return topologies.get_topology_desc(platform="tpu", topology_name=t.topology, chip_config_name=t.chip_config,
                                      chips_per_host_bounds=t.host_bounds, num_slices=1, wrap=t.wrap).devices


@dataclasses.dataclass
class Plan:
  topology: Topology
  data: int
  model: int
  remat: bool
  microbatches: int
  parameters_over_data: bool = False  # t5x's 2-D parameter partitioning (partitioning.logical_axis_rules)
  chips: int = 0
  hosts: int = 0
  arguments: int = 0     # bytes per chip: parameters, optimizer state, the batch
  temporaries: int = 0
  total: int = 0
  flops: float = 0.0     # per chip, one step
  collectives: dict = dataclasses.field(default_factory=dict)  # kind -> (count, bytes) in the step's program
  error: str | None = None

  @property
  def fits(self) -> bool:
    return self.error is None and self.total <= self.topology.hbm_gib * GIB

  def lines(self, batch_size: int) -> list[str]:
    hosts = f"{self.hosts} host{'' if self.hosts == 1 else 's'}"
    head = (f"{self.topology.name}: {self.chips} chips, {hosts} x {self.chips // max(self.hosts, 1)}; "
            f"mesh data={self.data} x model={self.model}, remat={self.remat}, microbatches={self.microbatches}"
            f"{', parameters over data' if self.parameters_over_data else ''}; "
            f"{batch_size // self.hosts if self.hosts else '?'} rows per host")
    if self.error:
      return [head, f"  does not fit: {self.error}"]
    hbm = self.topology.hbm_gib * GIB
    seconds = self.flops / (0.5 * self.topology.peak_tflops * 1e12)
    return [head,
            f"  per chip: arguments (params, optimizer state, batch) {self.arguments / GIB:.2f} GiB, temporaries "
            f"{self.temporaries / GIB:.2f} GiB, total {self.total / GIB:.2f} GiB of {self.topology.hbm_gib} GiB HBM "
            f"({self.total / hbm:.0%}): {'fits' if self.fits else 'DOES NOT FIT'}",
            f"  step: {self.flops / 1e9:,.1f} GFLOPs per chip; {seconds:.4g} s/step at 50% MFU",
            "  collectives in the step's program" +
            (" (the microbatch loop's counted once)" if self.microbatches > 1 else "") + ": " + (", ".join(f"{kind} {n} ({size / 2**20:,.1f} MiB)" for kind, (n, size)
                                                    in sorted(self.collectives.items())) or "none")]


def _first_line(e: Exception) -> str:
  text = str(e)
  for line in text.splitlines():
    if "RESOURCE_EXHAUSTED" in line or "Ran out of memory" in line:
      return line.strip()
  return text.splitlines()[0] if text else type(e).__name__


def compile_step(config, tx, devices, topology: Topology, data: int, model: int, batch_size: int, lengths: dict,
                 microbatches: int = 1, z_loss: float = 1e-4, loss_normalizing_factor=None) -> Plan:
  """Compile the train step for data x model of `devices`; memory and FLOPs per chip, or the compiler's error."""
  chips = len(devices)
  plan = Plan(topology, data, model, config.remat, microbatches, chips=chips,
              hosts=len({d.process_index for d in devices}),
              parameters_over_data=partitioning.logical_axis_rules() != partitioning.LOGICAL_AXIS_RULES)
  if data * model != chips:
    plan.error = f"data x model = {data * model} is not the {chips} chips"
    return plan
  if batch_size % (data * microbatches):
    plan.error = f"batch {batch_size} does not split into {microbatches} microbatches over {data} data shards"
    return plan
  mesh = partitioning.make_mesh(data, model, devices=devices)
  try:
    shardings = trainer.Shardings(config, tx, mesh)
  except UserError as e:
    plan.error = str(e)
    return plan
  step = trainer.jit_train_step(
      trainer.make_train_step(config, tx, z_loss, loss_normalizing_factor, microbatches), shardings)
  params, opt_state = shardings.restore_targets()  # abstract, carrying their shardings
  state = trainer.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings.replicated),
                             params=params, opt_state=opt_state,
                             frozen=shardings.frozen_target() if config.lora_rank else None)
  batch = {}
  for prefix, length in (("encoder", lengths["inputs"]), ("decoder", lengths["targets"])):
    names = ["input_tokens", "segment_ids", "positions"] + (["target_tokens", "loss_weights"] if prefix == "decoder"
                                                             else [])
    for name in names:
      batch[f"{prefix}_{name}"] = jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=shardings.batch)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=shardings.replicated)
  try:
    with jax.set_mesh(mesh), partitioning.axis_rules():
      compiled = step.lower(state, batch, key).compile()
  except Exception as e:  # noqa: BLE001  (XLA's out-of-memory and other compile errors are the answer)
    plan.error = _first_line(e)
    return plan
  return _read(compiled, plan)


def _read(compiled, plan: "Plan") -> "Plan":
  """Per-chip memory, FLOPs and collectives of a compiled step."""
  memory = compiled.memory_analysis()
  plan.arguments = memory.argument_size_in_bytes
  plan.temporaries = memory.temp_size_in_bytes
  plan.total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
  plan.collectives = collectives(compiled.as_text())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA counts a loop's body once: with microbatches (a scan) the step runs it `microbatches` times. Scaling the
  # whole count also scales the optimizer update, a small share of the step.
  plan.flops = float(cost.get("flops", 0.0)) * plan.microbatches
  return plan


def compile_decode(config, devices, topology: Topology, data: int, model: int, batch_size: int,
                   lengths: dict) -> Plan:
  """Compile greedy decoding as infer/eval run it on this mesh: parameters sharded by the training rules (no
  optimizer state), `batch_size` inputs of lengths['inputs'] tokens, up to lengths['targets'] new tokens."""
  from flan_jax import decoding
  plan = Plan(topology, data, model, False, 1, chips=len(devices), hosts=len({d.process_index for d in devices}))
  mesh = partitioning.make_mesh(data, model, devices=devices)
  try:
    params = partitioning.restore_target(config, mesh)
  except UserError as e:
    plan.error = str(e)
    return plan
  replicated = NamedSharding(mesh, P())
  tokens = jax.ShapeDtypeStruct((batch_size, lengths["inputs"]), jnp.int32,
                                sharding=partitioning.batch_sharding(mesh))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  try:
    with jax.set_mesh(mesh), partitioning.axis_rules():
      compiled = decoding.sample.lower(params, tokens, key, config=config,
                                       max_length=lengths["targets"]).compile()
  except Exception as e:  # noqa: BLE001
    plan.error = _first_line(e)
    return plan
  return _read(compiled, plan)


COLLECTIVE = re.compile(r"^\s*(?:ROOT\s+)?\S+\s*=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(?:-start)?\(")
ARRAY = re.compile(r"(pred|[suf]\d+|bf16)\[([\d,]*)\]")
ITEM_BYTES = {"pred": 1, "bf16": 2}


def collectives(hlo: str) -> dict:
  """kind -> (count, bytes of their results) over the compiled program's collective ops."""
  out = {}
  for line in hlo.splitlines():
    match = COLLECTIVE.search(line)
    if not match:
      continue
    size = 0
    for dtype, dims in ARRAY.findall(match.group(1)):
      itemsize = ITEM_BYTES.get(dtype, int(dtype[1:]) // 8 if dtype[1:].isdigit() else 4)
      size += itemsize * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    count, total = out.get(match.group(2), (0, 0))
    out[match.group(2)] = (count + 1, total + size)
  return out


def model_config():
  """The model train would build: the gin T5Config, or INITIAL_CHECKPOINT_PATH's with gin's runtime fields."""
  from flan_jax import checkpoints, train
  path = CheckpointConfig().initial_checkpoint_path
  return train.resolve_model_config(checkpoints.model_config(checkpoints.read_meta(path)[2]) if path else None)


def candidates(chips: int, batch_size: int):
  """(model ways, remat, parameters over data, microbatches) in the order auto tries them: fewest model ways,
  no remat, parameters only over 'model', fewest microbatches first."""
  ways = [m for m in range(1, chips + 1) if chips % m == 0]
  for model, remat, over_data, micro in itertools.product(ways, (False, True), (False, True), (1, 2, 4, 8)):
    data = chips // model
    if batch_size % (data * micro) == 0:
      yield model, remat, over_data, micro


def plan(topology_names: list[str], auto: bool = False, log_fn=print) -> list[Plan]:
  """For each topology: the gin mesh (or with `auto`, the first setting that fits within 75% of HBM)."""
  from flan_jax.optim import adafactor
  # The settings objects train() builds, from the same gin bindings: plan compiles the step train would run.
  data, step, evaluation = DatasetConfig(), StepConfig(), EvalConfig()
  lengths = data.task_feature_lengths
  config, tx = model_config(), adafactor()
  results = []
  for name in topology_names:
    topology = TOPOLOGIES.get(name)
    devices = topology_devices(name)
    compile_for = lambda data_ways, model, cfg, micro: compile_step(
        cfg, tx, devices, topology, data_ways, model, data.batch_size, lengths, micro, step.z_loss,
        step.loss_normalizing_factor)
    if not auto:
      data_ways, model = _gin_mesh(len(devices))
      result = compile_for(data_ways, model, config, step.num_microbatches)
    else:
      result, budget = None, 0.75 * topology.hbm_gib * GIB
      for model, remat, over_data, micro in candidates(len(devices), data.batch_size):
        gin.bind_parameter("logical_axis_rules.parameters_over_data", over_data)
        tried = compile_for(len(devices) // model, model, dataclasses.replace(config, remat=remat), micro)
        log_fn(f"  tried data={tried.data} x model={model}, remat={remat}, parameters over data={over_data}, "
               f"microbatches={micro}: " +
               (f"{tried.total / GIB:.2f} GiB" if tried.error is None else "does not fit"))
        if result is None or (tried.fits and not result.fits):  # the first that fits at all, else the first tried
          result = tried
        if tried.fits and tried.total <= budget:
          result = tried
          break
      else:
        log_fn(f"  no setting fits within 75% of HBM; showing the first {'that fits' if result.fits else 'tried'}")
      gin.bind_parameter("logical_axis_rules.parameters_over_data", result.parameters_over_data)
    for line in result.lines(data.batch_size):
      log_fn(line)
    results.append(result)
    decode_batch = -(-evaluation.batch_size // result.data) * result.data
    decode = compile_decode(config, devices, topology, result.data, result.model, decode_batch,
                            lengths)
    log_fn(f"  decode (infer/eval, greedy, batch {decode_batch}, {lengths['inputs']} in, "
           f"up to {lengths['targets']} new): " +
           (f"{decode.total / GIB:.2f} GiB per chip ({decode.total / (topology.hbm_gib * GIB):.0%}), "
            f"{decode.flops / 1e9:,.1f} GFLOPs per chip for the whole decode" if decode.error is None
            else f"does not fit: {decode.error}"))
  return results


def _gin_mesh(chips: int) -> tuple[int, int]:
  bindings = gin.get_bindings("make_mesh")
  model = bindings.get("model_parallel", 1)
  data = bindings.get("data_parallel", -1)
  return (chips // model if data == -1 else data), model

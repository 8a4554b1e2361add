"""What `eval --suite flan` needs on a Cloud TPU slice: per-chip memory and a roofline time per benchmark, from
the compiler (deviceless, as `flan-jax plan`), for a model size's gin file.

    JAX_PLATFORMS=cpu .venv/bin/python scripts/plan_eval_suite.py --gin_file runs/flan_t5_xxl.gin \
        --topology v4-8 --model_parallel 4 [--batch_size 32] [--benchmarks mmlu bbh_cot]

Every example of each benchmark is tokenized and batched as `eval` batches it (longest first, padded to length
buckets, each task at its protocol's lengths). For each bucket the compiler gives the program `eval` runs:
first-step scoring (MMLU direct), or greedy decoding (the rest), plus the encoder alone. A decode loop's body
is counted once by XLA, so one decode step costs decode - encoder. Each program's time is its roofline on one
chip, max(FLOPs / peak, bytes accessed / HBM bandwidth): a floor no implementation beats. Every decode runs to
its task's full decode length (a model that never stops early: a random one), and each step is costed at the
benchmark's longest decode length; both make the decode figure an upper bound on the steps a trained model
takes. Memory is the largest compiled program's, per chip.
"""

import argparse
import collections

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from flan_jax import decoding, evaluation, gin_utils, inference, partitioning, plan
from flan_jax.data import registration

BENCHMARKS = {"mmlu": "MMLU direct", "mmlu_cot": "MMLU CoT", "bbh_direct": "BBH direct", "bbh_cot": "BBH CoT",
              "mgsm": "MGSM"}


def batches(mixture: str, batch_size: int):
  """(scoring, bucket) -> [batches, decode steps over them]; the benchmark's examples; its longest decode."""
  counts, examples, longest = collections.defaultdict(lambda: [0, 0]), 0, 0
  for task in registration.get_provider(mixture).tasks:
    vocabulary = task.output_features["inputs"].vocabulary
    protocol = evaluation.protocol_of(task.name)
    settings, _ = evaluation.task_settings(protocol, inference.Settings(batch_size=batch_size))
    _, rows = evaluation.examples(task.name, None, None)
    ids, cut = inference.tokenize(vocabulary, [r[0] for r in rows], settings.inputs_length)
    assert not cut.any(), task.name  # the protocols never cut a prompt
    steps = settings.max_decode_length or inference.DEFAULT_DECODE_LENGTH
    longest = max(longest, steps if protocol.scoring == "generation" else 0)
    for _, batch in inference._batches(ids, settings):  # noqa: SLF001  (eval's own batching)
      entry = counts[(protocol.scoring, batch.shape[1])]
      entry[0] += 1
      entry[1] += steps if protocol.scoring == "generation" else 0
    examples += len(rows)
  return counts, examples, longest


class Costs:
  """Compiled programs on the slice's mesh: (seconds at the roofline, bytes per chip) per program shape."""

  def __init__(self, config, topology: plan.Topology, devices, data: int, model: int):
    self.config, self.topology = config, topology
    self.mesh = partitioning.make_mesh(data, model, devices=devices)
    self.params = partitioning.restore_target(config, self.mesh)
    self.cache, self.peak_bytes = {}, 0  # (flops, bytes accessed, bytes per chip) per program

  def _compile(self, key, fn, *args, **static):
    if key not in self.cache:
      with jax.set_mesh(self.mesh), partitioning.axis_rules():
        compiled = fn.lower(*args, **static).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      memory = plan._read(compiled, plan.Plan(self.topology, 0, 0, False, 1)).total  # noqa: SLF001
      self.cache[key] = (float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), memory)
    flops, bytes_accessed, memory = self.cache[key]
    self.peak_bytes = max(self.peak_bytes, memory)
    return flops, bytes_accessed

  def _tokens(self, batch: int, length: int):
    return jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=partitioning.batch_sharding(self.mesh))

  def seconds(self, flops: float, bytes_accessed: float) -> float:
    return max(flops / (self.topology.peak_tflops * 1e12), bytes_accessed / (self.topology.hbm_gbps * 1e9))

  def encode(self, batch: int, length: int):
    fn = jax.jit(lambda p, t: decoding.Decoder(self.config).encode(p, t))
    return self._compile(("encode", batch, length), fn, self.params, self._tokens(batch, length))

  def first_token(self, batch: int, length: int, options: int):
    small = lambda: jax.ShapeDtypeStruct((options, 1), jnp.int32, sharding=NamedSharding(self.mesh, P()))
    return self._compile(("first_token", batch, length), decoding.score_options, self.params,
                         self._tokens(batch, length), small(), small(), config=self.config)

  def decode(self, batch: int, length: int, max_length: int):
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(self.mesh, P()))
    return self._compile(("decode", batch, length, max_length), decoding.sample, self.params,
                         self._tokens(batch, length), key, config=self.config, max_length=max_length)


def benchmark_seconds(costs: Costs, counts: dict, batch_size: int, longest_decode: int) -> float:
  total = 0.0
  for (scoring, length), (n, steps) in sorted(counts.items()):
    if scoring == "first_token":
      total += n * costs.seconds(*costs.first_token(batch_size, length, 4))
    elif scoring == "generation":
      encode = costs.encode(batch_size, length)
      whole = costs.decode(batch_size, length, longest_decode)
      step = costs.seconds(whole[0] - encode[0], whole[1] - encode[1])
      total += n * costs.seconds(*encode) + steps * step
    else:
      raise NotImplementedError(f"{scoring} scoring is not in the suite's benchmarks")
  return total


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", required=True)
  parser.add_argument("--topology", default="v4-8")
  parser.add_argument("--model_parallel", type=int, default=1)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
  args = parser.parse_args()
  import flan_jax.train  # noqa: F401  (registers train's gin configurables before the file is parsed)
  gin_utils.parse([args.gin_file], [], finalize=False)
  config = plan.model_config()
  devices = plan.topology_devices(args.topology)
  topology = plan.TOPOLOGIES[args.topology]
  data = len(devices) // args.model_parallel
  costs = Costs(config, topology, devices, data, args.model_parallel)
  print(f"{args.gin_file} on {args.topology}: mesh data={data} x model={args.model_parallel}, batch "
        f"{args.batch_size}; roofline at {topology.peak_tflops} TFLOP/s and {topology.hbm_gbps} GB/s per chip")
  print(f"{'benchmark':12} {'examples':>8} {'batches':>7} {'GiB/chip':>8} {'seconds':>8}")
  for mixture in args.benchmarks:
    counts, examples, longest = batches(mixture, args.batch_size)
    costs.peak_bytes = 0
    seconds = benchmark_seconds(costs, counts, args.batch_size, longest)
    print(f"{BENCHMARKS.get(mixture, mixture):12} {examples:8d} {sum(n for n, _ in counts.values()):7d} "
          f"{costs.peak_bytes / plan.GIB:8.2f} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
  main()

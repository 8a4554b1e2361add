"""What LoRA saves: train step time and memory, full finetuning against LoRA adapters, in one run.

    .venv/bin/python scripts/bench_lora.py [--shape 512/128] [--batch 8] [--steps 5] [--rank 8] [--targets q v]

The Flan-T5-small shape (random weights), float32, Adafactor, one device. Memory is XLA's own account of the
compiled step (arguments: parameters, optimizer state, batch; plus temporaries), so the two settings are
compared in one process; time is the median of --steps steps after the first (compilation).
"""

import argparse
import dataclasses
import statistics
import time

import flax.linen as nn
import jax
import numpy as np

from flan_jax import hugepages, lora, partitioning, trainer
from flan_jax.models import T5Config
from flan_jax.models.t5 import init_variables
from flan_jax.optim import adafactor

SMALL = T5Config()  # the Flan-T5-small shape


def measure(config, batch, steps):
  mesh = partitioning.make_mesh(1, 1, devices=jax.devices()[:1])
  tx = adafactor()
  shardings = trainer.Shardings(config, tx, mesh)
  with jax.set_mesh(mesh), partitioning.axis_rules():
    frozen = None
    if config.lora_rank:  # a base to train on: the same random init the full run starts from
      frozen = jax.jit(lambda r: lora.split(nn.unbox(init_variables(config, r))["params"])[1],
                       out_shardings=shardings.frozen)(jax.random.key(0))
    state = trainer.init_state(config, tx, shardings, jax.random.key(0), frozen=frozen)
    step = trainer.jit_train_step(trainer.make_train_step(config, tx), shardings)
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    memory = compiled.memory_analysis()
    times = []
    for _ in range(steps + 1):
      start = time.perf_counter()
      state, metrics = step(state, batch, jax.random.key(1))
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  trained = sum(x.size for x in jax.tree.leaves(shardings.abstract_params))
  return statistics.median(times[1:]), memory, trained


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", default="512/128")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--targets", nargs="+", default=["q", "v"])
  parser.add_argument("--tiny", action="store_true", help="a tiny model (for the test that the script runs)")
  args = parser.parse_args()
  hugepages.reexec_with_hugepages()  # as the flan-jax command runs
  inputs, targets = (int(x) for x in args.shape.split("/"))
  rng = np.random.default_rng(0)
  tokens = lambda n: rng.integers(2, 32000, (args.batch, n)).astype(np.int32)
  batch = {"encoder_input_tokens": tokens(inputs), "decoder_target_tokens": tokens(targets),
           "decoder_loss_weights": np.ones((args.batch, targets), np.float32)}
  batch["decoder_input_tokens"] = np.concatenate([np.zeros((args.batch, 1), np.int32),
                                                  batch["decoder_target_tokens"][:, :-1]], 1)
  base = T5Config(d_model=64, d_ff=128, num_heads=2, d_kv=32, num_encoder_layers=2, num_decoder_layers=2) \
      if args.tiny else SMALL
  runs = {"full finetune": base,
          f"LoRA r={args.rank} {'/'.join(args.targets)}": dataclasses.replace(
              base, lora_rank=args.rank, lora_alpha=2.0 * args.rank, lora_targets=tuple(args.targets))}
  print(f"| {args.shape}, batch {args.batch} | trained parameters | s/step | arguments | temporaries | total |")
  print("|---|---:|---:|---:|---:|---:|")
  results = {}
  for name, config in runs.items():
    seconds, memory, trained = measure(config, batch, args.steps)
    results[name] = seconds
    args_gib = memory.argument_size_in_bytes / 2**30
    temp_gib = memory.temp_size_in_bytes / 2**30
    print(f"| {name} | {trained:,} | {seconds:.3f} | {args_gib:.2f} GiB | {temp_gib:.2f} GiB | "
          f"{args_gib + temp_gib:.2f} GiB |", flush=True)
  full, adapted = results.values()
  print(f"LoRA step time: {adapted / full:.2f}x the full finetune's")


if __name__ == "__main__":
  main()

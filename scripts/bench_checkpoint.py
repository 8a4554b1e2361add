"""What checkpointing costs a training run: seconds per step with a checkpoint every 10 steps (asynchronous
orbax saves of parameters, Adafactor state and the data iterator) against one save at the end.

    .venv/bin/python scripts/bench_checkpoint.py [--steps 60] [--size small] [--lengths 128/32]

Runs `flan-jax train` twice on the demo mixture with the chosen model size (random init, batch 8), and compares
the mean seconds per step from the end of the first step (compilation) to the end of the last, a span that holds
every save but the final one. A save costs about the same at any length, so its share falls as steps get longer.
"""

import argparse
import tempfile
import time

from flan_jax import gin_utils, hugepages, train


def run(model_dir, size, steps, period, inputs, targets):
  gin_utils.parse(["runs/demo.gin", f"models/{size}.gin"], [
      f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8", "EVAL_TASKS = []",
      f"TASK_FEATURE_LENGTHS = {{'inputs': {inputs}, 'targets': {targets}}}", f"CheckpointConfig.period = {period}",
      "train.log_period_seconds = 5.0", "LEARNING_RATE = 5e-4"])
  logged = []  # (time, step) of each progress line

  def log_fn(line):
    if line.startswith("step "):
      logged.append((time.perf_counter(), int(line.split()[1].split("/")[0])))

  train.train(log_fn=log_fn)
  (t0, s0), (t1, s1) = logged[0], logged[-1]  # from the first step (compilation) to the last (before the final save)
  return (t1 - t0) / (s1 - s0)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--size", default="small")
  parser.add_argument("--lengths", default="128/32", help="inputs/targets")
  args = parser.parse_args()
  hugepages.reexec_with_hugepages()  # as the flan-jax command runs
  inputs, targets = (int(n) for n in args.lengths.split("/"))
  with tempfile.TemporaryDirectory() as work:
    none = run(f"{work}/none", args.size, args.steps, 10**9, inputs, targets)
    every10 = run(f"{work}/every10", args.size, args.steps, 10, inputs, targets)
  print(f"| {args.size}, {args.lengths}, batch 8 | {none:.3f} s/step | {every10:.3f} s/step | "
        f"{100 * (every10 / none - 1):+.1f}% |")


if __name__ == "__main__":
  main()

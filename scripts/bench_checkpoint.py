"""What checkpointing costs a training run: seconds per step with a checkpoint every 10 steps (asynchronous
orbax saves of parameters, Adafactor state and the data iterator) against one save at the end.

    .venv/bin/python scripts/bench_checkpoint.py [--steps 60] [--size small]

Runs `flan-jax train` twice on the demo mixture with the chosen model size (random init, lengths 128/32,
batch 8), and compares the median seconds per step of the logged windows after the first (compilation).
"""

import argparse
import statistics
import tempfile

from flan_jax import gin_utils, train


def run(model_dir, size, steps, period):
  gin_utils.parse(["runs/demo.gin", f"models/{size}.gin"], [
      f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8", "EVAL_TASKS = []",
      "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 32}", f"train.checkpoint_period = {period}",
      "train.log_period_seconds = 5.0", "LEARNING_RATE = 5e-4"])
  lines = []
  train.train(log_fn=lines.append)
  windows = [float(line.split(" s/step")[0].split()[-1]) for line in lines if " s/step" in line]
  return statistics.median(windows[1:])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--size", default="small")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as work:
    none = run(f"{work}/none", args.size, args.steps, 10**9)
    every10 = run(f"{work}/every10", args.size, args.steps, 10)
  print(f"| {args.size}, 128/32, batch 8 | {none:.3f} s/step | {every10:.3f} s/step | "
        f"{100 * (every10 / none - 1):+.1f}% |")


if __name__ == "__main__":
  main()

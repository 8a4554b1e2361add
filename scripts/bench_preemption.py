"""What a preemption costs: seconds from SIGTERM to the process's exit (its step saved), and from the rerun's
start to its first step, for the Flan-T5-small shape.

    .venv/bin/python scripts/bench_preemption.py [--trials 2] [--lengths 128/32] [--batch 8]

Each trial starts `flan-jax train` (the demo's generated mixture, the small model at random init, a checkpoint
period far away), sends SIGTERM after a few steps, and times the exit; then reruns the same command and times its
first step after the resume. A fresh run's start-up to its first step is measured too, to show what resuming adds.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

FLAN_JAX = os.path.join(os.path.dirname(sys.executable), "flan-jax")


def command(model_dir, lengths, batch):
  inputs, targets = lengths.split("/")
  return [FLAN_JAX, "train", "--gin_file=runs/demo.gin", "--gin_file=models/small.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=100000", f"--gin.BATCH_SIZE={batch}",
          f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {inputs}, 'targets': {targets}}}", "--gin.EVAL_TASKS=[]",
          "--gin.CheckpointConfig.period=100000", "--gin.train.log_period_seconds=0"]


def run_until(cmd, pattern, env):
  """Starts cmd; returns (process, seconds until a line matches `pattern`, the match)."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
  for line in proc.stdout:
    match = re.search(pattern, line)
    if match:
      return proc, time.perf_counter() - start, match
  raise SystemExit(f"{' '.join(cmd)} exited ({proc.wait()}) before printing {pattern!r}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trials", type=int, default=2)
  parser.add_argument("--lengths", default="128/32")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps_before", type=int, default=3, help="steps before the SIGTERM")
  args = parser.parse_args()
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  print(f"Flan-T5-small shape, batch {args.batch}, {args.lengths}; {os.cpu_count()} CPU cores")
  print("| trial | fresh start to step 1 | SIGTERM to exit (exit code) | step saved | rerun start to its first step |")
  print("|---:|---:|---:|---:|---:|", flush=True)
  for trial in range(args.trials):
    with tempfile.TemporaryDirectory() as work:
      cmd = command(os.path.join(work, "run"), args.lengths, args.batch)
      proc, first, _ = run_until(cmd, r"^step 1/", env)
      for line in proc.stdout:
        if line.startswith(f"step {args.steps_before}/"):
          break
      signalled = time.perf_counter()
      proc.send_signal(signal.SIGTERM)
      tail = proc.communicate()[0]
      exited = time.perf_counter() - signalled
      saved = re.search(r"preempted: step (\d+) saved", tail)
      rerun, resumed, match = run_until(cmd, r"^step (\d+)/", env)
      rerun.send_signal(signal.SIGKILL)
      rerun.wait()
      print(f"| {trial + 1} | {first:.1f} s | {exited:.1f} s ({proc.returncode}) | {saved.group(1) if saved else '-'} | "
            f"{resumed:.1f} s (step {match.group(1)}) |", flush=True)


if __name__ == "__main__":
  main()

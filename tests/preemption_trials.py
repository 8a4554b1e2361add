"""SIGTERM at random moments, beyond the suite's one trial (test_multihost): 2 processes x 2 fake CPU devices on
the 2x2 mesh with the model axis across them, packing and shuffling on, a checkpoint every step and an eval of
the demo's held-out task every 2 steps, so that a random moment falls in a step, an asynchronous save or an eval.

Each trial sends SIGTERM to process 1 alone after a random delay. Both processes must save the same step and exit
with the preemption code (or both finish, when the signal comes after the last step), and the rerun must end
bitwise equal to the uninterrupted run, with the same losses. Prints one line per trial; exits 1 on a failure.

`--uninterrupted N` instead repeats the run without a signal N times (with --busy, beside a process that keeps one
core busy): every run must finish, which checks that the in-training evals never deadlock the two processes'
collectives.

  .venv/bin/python tests/preemption_trials.py --trials 5 --seed 0
  .venv/bin/python tests/preemption_trials.py --uninterrupted 14 --busy
"""

import argparse
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flan_jax import preemption  # noqa: E402
from test_multihost import MODEL_ACROSS_PROCESSES, _start_two  # noqa: E402
from test_train import assert_bitwise_equal, train_losses  # noqa: E402

STEPS = 6
FLAGS = [*MODEL_ACROSS_PROCESSES, "--gin.CheckpointConfig.period=1", "--gin.EVAL_PERIOD=2",
         "--gin.EVAL_TASKS=['demo_held_out_rules']", "--gin.EvalConfig.max_examples=16", "--gin.EvalConfig.batch_size=8"]


def _run(model_dir, sigterm_after=None, timeout=600):
  """(exit codes, outputs, seconds) of one two-process run; SIGTERM to process 1 `sigterm_after` s in."""
  started = time.time()
  procs = _start_two(model_dir, STEPS, *FLAGS)
  if sigterm_after is not None:
    while time.time() - started < sigterm_after and procs[1].poll() is None:
      time.sleep(0.05)
    if procs[1].poll() is None:
      procs[1].send_signal(signal.SIGTERM)
  try:
    outputs = [p.communicate(timeout=max(1, started + timeout - time.time()))[0] for p in procs]
  except subprocess.TimeoutExpired:  # a hang is a failed trial, not a stuck script
    for p in procs:
      p.kill()
    outputs = [p.communicate()[0] + f"\n(killed after {timeout} s)" for p in procs]
  return [p.returncode for p in procs], outputs, time.time() - started


def _phase(output: str) -> str:
  """The last line process 1 printed before the notice (a step, an eval, a resume), or at all."""
  before = [line for line in output.split("SIGTERM:")[0].strip().splitlines() if not line.startswith(("W", "I0"))]
  return before[-1][:100] if before else "(nothing printed yet)"


def _busy():
  while True:
    pass


def _repeat(runs: int, busy: bool) -> int:
  """Uninterrupted runs: each must end with both processes done well within 4 minutes."""
  hog = multiprocessing.Process(target=_busy, daemon=True) if busy else None
  if hog:
    hog.start()
  root, hangs = tempfile.mkdtemp(prefix="uninterrupted_"), 0
  for run in range(runs):
    codes, _, seconds = _run(os.path.join(root, str(run)), timeout=240)
    hangs += codes != [0, 0]
    print(f"run {run}: exit codes {codes} after {seconds:.0f} s", flush=True)
  if hog:
    hog.terminate()
  print(f"{runs - hangs} of {runs} runs finished ({root})")
  return 1 if hangs else 0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--uninterrupted", type=int, default=0, help="repeat the run without a signal N times")
  parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
  args = parser.parse_args()
  if args.uninterrupted:
    sys.exit(_repeat(args.uninterrupted, args.busy))
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="preemption_trials_")
  reference = os.path.join(root, "reference")
  codes, outputs, seconds = _run(reference)
  assert codes == [0, 0], outputs
  print(f"uninterrupted: {STEPS} steps in {seconds:.0f} s", flush=True)
  failures = 0
  for trial in range(args.trials):
    model_dir = os.path.join(root, f"trial{trial}")
    delay = rng.uniform(0.2, 1.0) * seconds
    codes, outputs, _ = _run(model_dir, delay)
    saved = [re.findall(r"preempted: step (\d+) saved in .*, ([\d.]+)s after the notice", out) for out in outputs]
    if codes == [preemption.EXIT_CODE] * 2:
      ok = len(saved[0]) == len(saved[1]) == 1 and saved[0][0][0] == saved[1][0][0]
      what = (f"both saved step {saved[0][0][0]} ({saved[1][0][1]} s after the notice); process 1 was at: "
              f"{_phase(outputs[1])}" if ok else f"the processes saved different steps: {saved}")
    elif codes == [0, 0]:
      ok, what = True, "both finished before the signal"
    elif codes == [0, -signal.SIGTERM]:  # no handler yet (start-up) or any more (after the last save)
      ok, what = True, f"process 1 ended by the signal outside training, after: {_phase(outputs[1])}"
    else:
      ok, what = False, f"exit codes {codes}, saved {saved}: {[out[-800:] for out in outputs]}"
    if ok:
      resume_codes, _, _ = _run(model_dir)
      ok = resume_codes == [0, 0] and train_losses(model_dir) == train_losses(reference)
      try:
        assert_bitwise_equal(reference, model_dir, STEPS)
      except AssertionError:
        ok = False
      what += "; the rerun ends bitwise equal, with equal losses" if ok else f"; the rerun differs ({resume_codes})"
    failures += not ok
    print(f"trial {trial}: SIGTERM at {delay:.1f} s: {'ok' if ok else 'FAILED'}: {what}", flush=True)
  print(f"{args.trials - failures} of {args.trials} trials passed ({root})")
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  main()

"""`python -m flan_jax` in a subprocess for the training tests.

With KILL_DURING_SAVE_STEP=N the process SIGKILLs itself while checkpoint N is being written: after its
files are in orbax's temporary directory, before the rename that commits it. With FAIL_AT_STEP=N an exception
is raised in the training loop after step N (a crash that is not bad input). With SIGNAL_AT_STEP=N:TERM (or
N:KILL) the process sends itself that signal once step N is logged; after a SIGTERM it goes on 2 s later, by when
JAX's preemption service has fixed the step to save from where every process is. With SIGNAL_DURING_EVAL=1 it
sends itself SIGTERM as an evaluation starts.

Commands separated by `--then` run one after another in this one process (it ends at the first that fails): tests
that need several commands on the same fake devices pay for one process start, not one each.
"""

import os
import signal
import sys

if os.environ.get("KILL_DURING_SAVE_STEP"):
  from orbax.checkpoint._src.path import atomicity

  _finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == os.environ["KILL_DURING_SAVE_STEP"]:
      os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize

if os.environ.get("FAIL_AT_STEP"):
  from flan_jax import logs

  _update = logs.Progress.update

  def update(self, done, *args, **kwargs):
    if done == int(os.environ["FAIL_AT_STEP"]):
      raise RuntimeError(f"injected failure after step {done}")
    return _update(self, done, *args, **kwargs)

  logs.Progress.update = update

if os.environ.get("SIGNAL_AT_STEP"):
  import time

  from flan_jax import logs

  _update_before_signal = logs.Progress.update
  _at, _name = os.environ["SIGNAL_AT_STEP"].split(":")

  def update_then_signal(self, done, *args, **kwargs):
    logged = _update_before_signal(self, done, *args, **kwargs)
    if done == int(_at):
      os.kill(os.getpid(), getattr(signal, "SIG" + _name))
      time.sleep(2)
    return logged

  logs.Progress.update = update_then_signal

if os.environ.get("SIGNAL_DURING_EVAL"):
  from flan_jax import evaluation

  _make_evaluator = evaluation.make_train_evaluator

  def make_evaluator_that_signals(*args, **kwargs):
    evaluate = _make_evaluator(*args, **kwargs)

    def evaluate_after_a_sigterm(params):
      os.kill(os.getpid(), signal.SIGTERM)
      return evaluate(params)

    return evaluate_after_a_sigterm

  evaluation.make_train_evaluator = make_evaluator_that_signals

from flan_jax import cli  # noqa: E402

commands = [[]]
for arg in sys.argv[1:]:
  if arg == "--then":
    commands.append([])
  else:
    commands[-1].append(arg)
if len(commands) > 1:
  import gin

  cli.set_up_process()
  for command in commands:
    code = cli.main(command)
    gin.clear_config()  # as between two tests: the next command parses its own bindings
    if code:
      sys.exit(code)
  sys.exit(0)
import runpy  # noqa: E402

runpy.run_module("flan_jax", run_name="__main__")  # `python -m flan_jax ARGS`, the module entry point

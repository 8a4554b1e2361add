"""Preemption: on SIGTERM every process saves the same step and exits with EXIT_CODE, so the run goes on later.

Spot and preemptible machines get a SIGTERM, then disappear (Cloud TPU waits up to 5 minutes; Slurm, its
GraceTime). While train() runs, a SIGTERM to any process marks the run preempted. With jax.distributed the notice
goes to JAX's preemption service, which tells every process and picks the first step all of them can still reach
(its sync point); a lone process stops after its current step. That step is saved with the data position, the save
is committed, and the process exits with EXIT_CODE. A second SIGTERM, or `deadline_seconds` after the notice, ends
the process at once: a save in progress is never committed, so the last committed checkpoint stays as it was.
"""

import datetime
import os
import signal
import threading
import time

EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; run the same command again
# Where JAX's own SIGTERM notifier posts a notice (xla preemption_sync_manager.cc); every process watches it.
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"
_POLL_SECONDS = 0.2


class Preempted(Exception):
  """Training stopped at a committed checkpoint because the machine is being taken away; rerun to resume."""


def _sync_manager():
  from jax._src import distributed
  return distributed.global_state.preemption_sync_manager


def _exit_now(reason: str) -> None:
  """Ends the process from a signal handler or a thread: os.write takes no lock that the interrupted code may hold."""
  os.write(2, f"flan-jax: {reason}: exiting without a new checkpoint; the last committed one is kept\n".encode())
  os._exit(EXIT_CODE)


class Watch:
  """SIGTERM handling for the duration of a `with` block; the previous handler comes back after it.

  The handler only records the time (it may interrupt any code, so it takes no lock); a daemon thread posts the
  notice to JAX and enforces the deadline. Once a preemption has begun, the deadline stays armed until the process
  ends, whatever the block does. Outside the main thread (where Python allows no handler) nothing is installed.
  """

  def __init__(self, deadline_seconds: float, start_step: int, log_fn=print):
    self.deadline_seconds = deadline_seconds
    self.start_step = start_step
    self.log_fn = log_fn
    self.signalled_at = None  # the first SIGTERM, set by the handler only
    self.started_at = None  # when this process learned of the preemption: its own SIGTERM or the sync point
    self._previous = None
    self._installed = False
    self._closed = threading.Event()

  def __enter__(self):
    import jax
    if jax.process_count() > 1 and _sync_manager() is None:
      from flan_jax.errors import UserError
      raise UserError("several processes need JAX's preemption service to agree on a step to save: keep "
                      "jax_enable_preemption_service on")
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
      threading.Thread(target=self._watch, daemon=True, name="flan-jax-preemption").start()
    self.reached(self.start_step)  # JAX's step count starts here: a notice before the first step stops after it
    return self

  def __exit__(self, *exc_info):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      if self.started_at is None:
        self._closed.set()
    return False

  def _on_sigterm(self, signum, frame):
    if self.signalled_at is not None:
      _exit_now("a second SIGTERM")
    self.signalled_at = time.time()

  def _watch(self):
    """Posts this process's notice, then ends the process if the deadline passes first."""
    posted = False
    while not self._closed.wait(_POLL_SECONDS):
      if self.signalled_at is not None and not posted:
        posted = True
        self.started_at = self.started_at or self.signalled_at
        self.log_fn(f"SIGTERM: saving at the next step every process can reach, then exiting with {EXIT_CODE} "
                    f"(deadline {self.deadline_seconds:g}s)")
        self._post_notice()
      if self.started_at is not None and time.time() > self.started_at + self.deadline_seconds:
        _exit_now(f"the preemption deadline ({self.deadline_seconds:g}s) passed")

  def _post_notice(self):
    """Tells JAX's preemption service, as its own SIGTERM notifier would (this handler replaced that one)."""
    from jax._src import distributed
    if distributed.global_state.client is None:
      return
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    try:
      distributed.global_state.client.key_value_set(_NOTICE_KEY, now)
    except Exception as e:  # noqa: BLE001  (another process posted first: the notice is out either way)
      if "ALREADY_EXISTS" not in str(e):
        self.log_fn(f"could not post the preemption notice: {e}")

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop: the step every process agreed on after a SIGTERM to any of them.

    Steps are the checkpoint steps, as orbax also gives them to JAX's preemption service when it saves."""
    if _sync_manager() is not None:
      from jax.experimental import multihost_utils
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self.signalled_at is not None
    if stop and self.started_at is None:
      self.started_at = time.time()
    return stop

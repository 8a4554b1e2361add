"""Multi-process start-up with JAX's own runtime (`jax.distributed`): one process per host (or per GPU).

Where the coordinator comes from, first match wins:
  flags / gin `initialize.coordinator_address`, `.num_processes`, `.process_id`;
  environment FLAN_JAX_COORDINATOR_ADDRESS, FLAN_JAX_NUM_PROCESSES, FLAN_JAX_PROCESS_ID;
  FLAN_JAX_DISTRIBUTED=auto (or gin `initialize.auto = True`): JAX detects TPU VM slices and Slurm itself.
Nothing set means a single process.

A lost process (a SIGKILL, a VM that vanished) fails the others instead of leaving them blocked in a collective: JAX's
coordination service declares a process dead after `heartbeat_timeout_seconds` without a heartbeat and ends every
other process (exit by SIGABRT, its log naming the task that stopped sending heartbeats); a lost process 0, which
hosts the service, is noticed sooner. `shutdown_timeout_seconds` bounds how long an exiting process waits for the
others at the shutdown barrier. Both are gin settings (`initialize.heartbeat_timeout_seconds`,
`initialize.shutdown_timeout_seconds`).
"""

import os

import gin
import jax

from flan_jax.errors import UserError


@gin.configurable
def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False, heartbeat_timeout_seconds: int = 60,
               shutdown_timeout_seconds: int = 120) -> None:
  env = os.environ
  coordinator_address = coordinator_address or env.get("FLAN_JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes if num_processes is not None else _int_env("FLAN_JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _int_env("FLAN_JAX_PROCESS_ID")
  auto = auto or env.get("FLAN_JAX_DISTRIBUTED") == "auto"
  if not coordinator_address and not auto:
    return
  if coordinator_address and (num_processes is None or process_id is None):
    raise UserError("a coordinator address needs num_processes and process_id too")
  if jax.config.jax_platforms in (None, "", "cpu") or env.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
  timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                  shutdown_timeout_seconds=shutdown_timeout_seconds)
  if auto and not coordinator_address:
    jax.distributed.initialize(**timeouts)
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **timeouts)


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError as e:
    raise UserError(f"{name}={value!r} is not an integer") from e

"""Several processes (jax.distributed over gloo, fake CPU devices): 2 processes train exactly as 1 process on one
device (this test's), whichever way the mesh's axes cross the processes; a mesh that cannot be laid out is one
error; a SIGTERM to one process saves the same step in both; a SIGKILL to one ends the other. The reference runs
on one device because a mesh's layout changes no loss beyond 1e-5 (test_mesh's 4x2 test); what is tested here is
that the processes together compute what one does."""

import os
import re
import time
import types

import jax
import numpy as np
import pytest

from flan_jax import checkpoints, logs, partitioning, preemption
from flan_jax.errors import UserError
from test_train import (_free_port, assert_bitwise_equal, params_difference, run_in_process, run_subprocess,
                        train_losses)


def _start_two(model_dir, steps, *flags, env=None, cwd=None, env_1=None):
  """Processes 0 and 1 of one run, each with 2 fake CPU devices; `env_1` only for process 1."""
  port = _free_port()
  return [run_subprocess(model_dir, steps, *flags, f"--coordinator_address=127.0.0.1:{port}",
                         "--num_processes=2", f"--process_id={i}", wait=False, cwd=cwd,
                         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
                              **(env or {}), **((env_1 or {}) if i else {})})
          for i in range(2)]


def _two_processes(model_dir, steps, *flags, env=None, cwd=None, env_1=None):
  procs = _start_two(model_dir, steps, *flags, env=env, cwd=cwd, env_1=env_1)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  return [p.returncode for p in procs], outputs


def test_two_processes_equal_one_process(tmp_path, monkeypatch):
  """2 processes x 2 fake CPU devices (gloo) against 1 process: the same global batches (one task, in order,
  unpacked, so the two hosts' shards together are the single host's batch) give the same losses.
  The eval set has one example, so the second process's eval shard is empty: it feeds padding rows."""
  (tmp_path / "one_example_tasks.py").write_text(
      "from flan_jax.data.registration import register_prompt_task\n"
      "from flan_jax.vocab import byte_vocabulary\n"
      "rows = [{'inputs': f'say {i}', 'targets': str(i)} for i in range(20)]\n"
      "register_prompt_task('one_example', {'train': rows, 'validation': rows[:1]}, byte_vocabulary())\n")
  same_data = ["--gin.MIXTURE_OR_TASK_NAME='demo_held_in'", "--gin.DatasetConfig.pack=False",
               "--gin.DatasetConfig.shuffle=False", "--gin.MIXTURE_OR_TASK_MODULE='one_example_tasks'",
               "--gin.EVAL_TASKS=['one_example']", "--gin.EVAL_PERIOD=3", "--gin.EvalConfig.batch_size=4"]
  monkeypatch.chdir(tmp_path)
  run_in_process(str(tmp_path / "single"), 3, *same_data, "--gin.make_mesh.data_parallel=1")
  codes, outputs = _two_processes(tmp_path / "multi", 3, *same_data, "--gin.make_mesh.data_parallel=4", cwd=tmp_path)
  assert codes == [0, 0], outputs
  assert "data shard 0 of 2, 4 rows a step from this process" in outputs[0]
  a, b = train_losses(tmp_path / "single"), train_losses(tmp_path / "multi")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  assert max(abs(a[s] - b[s]) for s in a) <= 1e-5, (a, b)
  assert checkpoints.locate(str(tmp_path / "multi" / "checkpoints"))[1] == 3
  evals = [[r for r in logs.read_log(str(tmp_path / run)) if "eval/one_example/loss" in r]
           for run in ("single", "multi")]
  assert [len(e) for e in evals] == [1, 1] and evals[1][0]["step"] == 3
  assert abs(evals[0][0]["eval/one_example/loss"] - evals[1][0]["eval/one_example/loss"]) <= 1e-5


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The demo mixture (packed, shuffled), 4 steps on one device: what the 2-process run below is compared with."""
  model_dir = tmp_path_factory.mktemp("single") / "run"
  lines = run_in_process(str(model_dir), 4, "--gin.make_mesh.data_parallel=1")
  assert any("data shard 0 of 1, 8 rows a step from this process" in line for line in lines)
  return model_dir


# The model axis across the processes, the data axis within each: both processes feed the same rows. (The 1x4
# layout is test_data_layout_gives_each_process_its_shard's, and test_mesh decodes on it with two processes.)
MODEL_ACROSS_PROCESSES = ["--gin.make_mesh.data_parallel=2", "--gin.make_mesh.model_parallel=2",
                          "--gin.make_mesh.minor_axis='data'"]


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
  """2 processes, the 2x2 mesh with the model axis across them, 4 steps uninterrupted: compared bitwise below."""
  model_dir = tmp_path_factory.mktemp("multi") / "run"
  codes, outputs = _two_processes(model_dir, 4, *MODEL_ACROSS_PROCESSES)
  assert codes == [0, 0], outputs
  return model_dir, outputs


def test_model_axis_across_processes_equals_one_process(one_process, two_by_two):
  """Processes that hold replicas of the same rows read the same shard: with packing and shuffling on the demo
  mixture, 2 processes x 2 devices train exactly as 1 process."""
  model_dir, outputs = two_by_two
  assert all("data shard 0 of 1, 8 rows a step from this process" in out for out in outputs)
  a, b = train_losses(one_process), train_losses(model_dir)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  assert max(abs(a[s] - b[s]) for s in a) <= 1e-5, (a, b)
  assert params_difference(one_process, model_dir, 4) <= 1e-5


def test_sigterm_to_one_process_saves_the_same_step_in_both(two_by_two, tmp_path):
  """One trial (the suite's time): process 1 alone gets SIGTERM after step 1 and waits 2 s, while process 0 goes on
  as far as the collectives let it; JAX's preemption service fixes one step for both. A checkpoint every step, so
  asynchronous saves are being written when the notice comes and when the agreed step's save is due. Both save the
  same step and exit with the preemption code; the rerun restores each process's own iterator
  (train_ds-<p>-of-2) and ends bitwise where the uninterrupted run does. (One process, SIGTERM during an eval:
  test_train.)"""
  model_dir = tmp_path / "run"
  codes, outputs = _two_processes(model_dir, 4, *MODEL_ACROSS_PROCESSES,
                                  "--gin.CheckpointConfig.period=1", env_1={"SIGNAL_AT_STEP": "1:TERM"})
  assert codes == [preemption.EXIT_CODE] * 2, outputs
  steps = [re.findall(rf"flan-jax: preempted: step (\d) saved in {model_dir}/checkpoints, ", out) for out in outputs]
  assert steps[0] == steps[1] and steps[0][0] in ("2", "3"), [out[-1500:] for out in outputs]
  step = steps[0][0]
  saved = os.listdir(model_dir / "checkpoints" / step / "data_iterator")
  assert sorted(f for f in saved if f.startswith("train_ds")) == [
      f"train_ds-0000{p}-of-00002.{ext}" for p in range(2) for ext in ("data-00000-of-00001", "index")]
  codes, outputs = _two_processes(model_dir, 4, *MODEL_ACROSS_PROCESSES)
  assert codes == [0, 0], outputs
  assert all(f"restored the input position at step {step}" in out for out in outputs)
  assert_bitwise_equal(two_by_two[0], model_dir, 4)
  assert train_losses(model_dir) == train_losses(two_by_two[0])


def test_sigkill_to_one_process_ends_the_other(tmp_path):
  """Process 1 SIGKILLs itself after step 1; process 0, blocked in step 2's collectives, is ended by the lost
  heartbeats (a 5 s timeout here) and says which process stopped."""
  procs = _start_two(tmp_path / "run", 50, "--gin.initialize.heartbeat_timeout_seconds=5",
                     env_1={"SIGNAL_AT_STEP": "1:KILL"})
  procs[1].wait(timeout=600)
  killed = time.time()
  output = procs[0].communicate(timeout=120)[0]
  assert procs[1].returncode == -9 and procs[0].returncode != 0, output[-3000:]
  assert time.time() - killed < 5 + 20, output[-3000:]
  assert "(stopped sending heartbeats):\n1\n" in output, output[-3000:]  # the runtime names the lost process


class _FakeMesh:
  """What data_layout reads of a mesh: its axis sizes and, for each device, the process that holds it."""

  def __init__(self, processes):
    self.devices = np.array([[types.SimpleNamespace(process_index=p) for p in row] for row in processes])
    self.shape = {"data": self.devices.shape[0], "model": self.devices.shape[1]}


@pytest.mark.parametrize("processes, batch_size, expected", [
    ([[0, 0, 1, 1]], 8, [(0, 1, 8), (0, 1, 8)]),        # 1x4: the model axis across the processes
    ([[0, 1], [0, 1]], 8, [(0, 1, 8), (0, 1, 8)]),      # 2x2, minor_axis='data': the same rows in both
    ([[0], [0], [1], [1]], 8, [(0, 2, 4), (1, 2, 4)]),  # 4x1: 'data' across the processes
    ([[0, 0], [1, 1], [2, 2], [3, 3]], 8, [(p, 4, 2) for p in range(4)]),
])
def test_data_layout_gives_each_process_its_shard(processes, batch_size, expected, monkeypatch):
  """(shard index, shards, rows a step) as each process of a run computes them (t5x's get_data_layout)."""
  mesh = _FakeMesh(processes)
  monkeypatch.setattr(jax, "process_count", lambda: len(expected))
  layouts = []
  for p in range(len(expected)):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    layout = partitioning.data_layout(mesh, batch_size)
    layouts.append((layout.shard_index, layout.num_shards, layout.rows))
  assert layouts == expected


@pytest.mark.parametrize("processes, batch_size, message", [
    ([[0], [0], [1]], 6, r"the mesh data=3 x model=1 cannot be laid out over 2 processes: each process must hold a "
                         r"contiguous block of 'data' positions, the same size for all, shared whole or not at all "
                         r"\(held: \{0: \(0, 1\), 1: \(2,\)\}\)"),
    ([[0], [1], [0], [1]], 8, r"cannot be laid out over 2 processes.*held: \{0: \(0, 2\), 1: \(1, 3\)\}"),
    ([[0], [0]], 8, r"processes \[1\] hold no device of the mesh"),
    ([[0], [0], [1], [1]], 6, r"^BATCH_SIZE=6 is not divisible by the data-parallel size 4$"),
])
def test_a_mesh_that_cannot_be_laid_out_over_the_processes(processes, batch_size, message, monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  with pytest.raises(UserError, match=message):
    partitioning.data_layout(_FakeMesh(processes), batch_size)

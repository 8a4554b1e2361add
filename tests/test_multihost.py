"""Several processes (jax.distributed over gloo, fake CPU devices): 2 processes train exactly as 1 process on one
device (this test's), whichever way the mesh's axes cross the processes; a mesh that cannot be laid out is one
error. The reference runs on one device because a mesh's layout changes no loss beyond 1e-5 (test_mesh's 4x2
test); what is tested here is that the processes together compute what one does."""

import pytest

from flan_jax import checkpoints, logs
from test_train import _free_port, params_difference, run_in_process, run_subprocess, train_losses


def _two_processes(model_dir, steps, *flags, env=None, cwd=None):
  port = _free_port()
  procs = [run_subprocess(model_dir, steps, *flags, f"--coordinator_address=127.0.0.1:{port}",
                          "--num_processes=2", f"--process_id={i}", wait=False, cwd=cwd,
                          env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
                               **(env or {})})
           for i in range(2)]
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
  same_data = ["--gin.MIXTURE_OR_TASK_NAME='demo_held_in'", "--gin.train.pack=False",
               "--gin.train.shuffle=False", "--gin.MIXTURE_OR_TASK_MODULE='one_example_tasks'",
               "--gin.EVAL_TASKS=['one_example']", "--gin.EVAL_PERIOD=3", "--gin.train.eval_batch_size=4"]
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
  """The demo mixture (packed, shuffled), 3 steps on one device: the run both layouts below are compared with."""
  model_dir = tmp_path_factory.mktemp("single") / "run"
  lines = run_in_process(str(model_dir), 3, "--gin.make_mesh.data_parallel=1")
  assert any("data shard 0 of 1, 8 rows a step from this process" in line for line in lines)
  return model_dir


@pytest.mark.parametrize("mesh", [
    ["--gin.make_mesh.data_parallel=1", "--gin.make_mesh.model_parallel=4"],
    ["--gin.make_mesh.data_parallel=2", "--gin.make_mesh.model_parallel=2", "--gin.make_mesh.minor_axis='data'"],
], ids=["1x4", "2x2_model_across_processes"])
def test_model_axis_across_processes_equals_one_process(mesh, one_process, tmp_path):
  """Processes that hold replicas of the same rows read the same shard: with packing and shuffling on the demo
  mixture, 2 processes x 2 devices train exactly as 1 process."""
  codes, outputs = _two_processes(tmp_path / "multi", 3, *mesh)
  assert codes == [0, 0], outputs
  assert all("data shard 0 of 1, 8 rows a step from this process" in out for out in outputs)
  a, b = train_losses(one_process), train_losses(tmp_path / "multi")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  assert max(abs(a[s] - b[s]) for s in a) <= 1e-5, (a, b)
  assert params_difference(one_process, tmp_path / "multi", 3) <= 1e-5


def test_a_mesh_that_cannot_be_laid_out_over_the_processes(tmp_path):
  codes, outputs = _two_processes(tmp_path / "run", 2, "--gin.make_mesh.data_parallel=3", "--gin.BATCH_SIZE=6")
  assert codes == [2, 2], outputs
  for out in outputs:
    assert out.strip().splitlines()[-1].startswith(
        "flan-jax: error: the mesh data=3 x model=1 cannot be laid out over 2 processes")
  assert not (tmp_path / "run").exists()

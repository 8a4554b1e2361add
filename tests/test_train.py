"""Training: exact resume, crash safety, NaN stop, microbatches, bad input, entry points (meshes: test_mesh.py)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flan_jax import checkpoints, cli, gin_utils, logs, preemption, train
from flan_jax.errors import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
# The demo run shrunk: tiny model, byte vocabulary, short sequences, every step logged.
BASE = ["--gin_file=runs/demo.gin", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}",
        "--gin.BATCH_SIZE=8", "--gin.EVAL_TASKS=[]", "--gin.train.log_period_seconds=0"]


def _bindings(model_dir, steps, *extra):
  return BASE + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"] + list(extra)


def run_in_process(model_dir, steps, *extra):
  bindings, rest = gin_utils.split_gin_bindings(_bindings(model_dir, steps, *extra))
  gin_utils.parse([a.split("=", 1)[1] for a in rest], bindings)
  lines = []
  train.train(log_fn=lines.append)
  return lines


def run_subprocess(model_dir, steps, *extra, env=None, wait=True, cwd=None):
  return run_cli("train", *_bindings(model_dir, steps, *extra), env=env, wait=wait, cwd=cwd)


def run_cli(*args, env=None, wait=True, cwd=None):
  """`flan-jax ARGS` in a subprocess (tests/train_worker.py)."""
  cmd = [sys.executable, os.path.join(HERE, "train_worker.py")] + list(args)
  # Without PYTHONUNBUFFERED, as a user's shell would have it: a killed process's progress lines must get out.
  user_env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  full_env = {**user_env, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
  if env and "XLA_FLAGS" in env:  # added to this process's flags (conftest.py), not instead of them
    full_env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {env['XLA_FLAGS']}".strip()
  if not wait:
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
  return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600, cwd=cwd)


def train_losses(model_dir):
  return {r["step"]: r["train/loss"] for r in logs.read_log(str(model_dir)) if "train/loss" in r}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """The base run for 2 steps on this process's one device, a checkpoint every step: the reference or the starting
  point of several tests (which copy it before writing to it)."""
  model_dir = str(tmp_path_factory.mktemp("two_steps") / "run")
  run_in_process(model_dir, 2, "--gin.CheckpointConfig.period=1")
  return model_dir


def _copy(model_dir, tmp_path):
  return shutil.copytree(model_dir, str(tmp_path / "run"))


def _params(model_dir, step):
  params, _, _, _ = checkpoints.restore(os.path.join(model_dir, "checkpoints", str(step)))
  return jax.tree.leaves(params)


def saved_arrays(model_dir, step):
  """Every array of checkpoint `step` (parameters and optimizer state) as numpy, whatever mesh or processes wrote it."""
  import orbax.checkpoint as ocp
  out = []
  for item in (checkpoints.PARAMS, checkpoints.OPT_STATE):
    with ocp.PyTreeCheckpointer() as reader:
      path = os.path.join(model_dir, "checkpoints", str(step), item)
      tree = reader.metadata(path).item_metadata.tree
      out += jax.tree.leaves(reader.restore(path, restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)))
  return out


def assert_bitwise_equal(model_dir_a, model_dir_b, step):
  a, b = saved_arrays(model_dir_a, step), saved_arrays(model_dir_b, step)
  assert len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def params_difference(model_dir_a, model_dir_b, step):
  """The largest absolute difference between two runs' parameters at checkpoint `step`."""
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(_params(model_dir_a, step), _params(model_dir_b, step)))


def test_sigterm_saves_and_the_rerun_resumes_bitwise(tmp_path):
  """SIGTERM during the eval after step 1 (tests/train_worker.py): the eval finishes, step 2 is saved with its data
  position and the process exits with the preemption code; the rerun ends bitwise where the uninterrupted run does
  (parameters and Adafactor state; an eval changes neither), with the same losses, and rerunning the finished run
  does nothing. A checkpoint without an iterator re-reads the data."""
  flags = ["--gin.CheckpointConfig.period=3", "--gin.DROPOUT_RATE=0.1"]
  evals = ["--gin.EVAL_TASKS=['demo_held_in']", "--gin.EVAL_PERIOD=1", "--gin.EvalConfig.max_examples=0"]
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  run_in_process(straight, 6, *flags)
  result = run_subprocess(resumed, 6, *flags, *evals, env={"SIGNAL_DURING_EVAL": "1"})
  assert result.returncode == preemption.EXIT_CODE, result.stdout + result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"flan-jax: preempted: step 2 saved in {resumed}/checkpoints, "), result.stderr
  assert checkpoints.locate(os.path.join(resumed, "checkpoints"))[1] == 2
  assert re.search(r"^step 1: eval/demo_held_in/loss", result.stdout, re.M), result.stdout  # it finished
  shutil.copytree(resumed, str(tmp_path / "replayed"))
  with open(os.path.join(resumed, logs.LOG_FILE), "a") as f:  # as if a killed run had logged past its checkpoint
    f.write(json.dumps({"step": 7, "train/loss": 99.0}) + "\n")
  lines = run_in_process(resumed, 6, *flags)
  assert any(line.startswith("resumed from") and line.endswith("/2") for line in lines)
  with open(os.path.join(resumed, logs.LOG_FILE)) as f:  # README: the row that marks where the run resumed
    assert {"step": 2, "resumed": True} in [json.loads(line) for line in f]
  assert "restored the input position at step 2" in lines  # the saved tf.data iterator, no re-reading
  assert_bitwise_equal(straight, resumed, 6)
  a = train_losses(straight)
  assert train_losses(resumed) == a and sorted(a) == [1, 2, 3, 4, 5, 6]  # the killed run's row 7 is not kept
  assert run_in_process(resumed, 6, *flags) == [
      f"nothing to do: {resumed}/checkpoints already holds step 6 of TRAIN_STEPS=6"]
  # A checkpoint without an iterator (or from other data settings) reaches the position by re-reading.
  shutil.rmtree(tmp_path / "replayed" / "checkpoints" / "2" / "data_iterator")
  lines = run_in_process(str(tmp_path / "replayed"), 6, *flags)
  assert any(line.startswith("re-reading 2 batches") for line in lines)
  assert train_losses(tmp_path / "replayed") == a


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
  """The process SIGKILLs itself while checkpoint 4 is being written (tests/train_worker.py, which runs the command
  as `python -m flan_jax` does): step 4 is never committed, step 2 restores with its input position. The killed
  run's progress lines, printed into a pipe, must outlive the kill."""
  model_dir = str(tmp_path / "run")
  # TMPDIR: the killed save's staging folder (checkpoints.DataIteratorHandler) stays in tmp_path.
  result = run_subprocess(model_dir, 10, "--gin.CheckpointConfig.period=2",
                          env={"KILL_DURING_SAVE_STEP": "4", "TMPDIR": str(tmp_path)})
  assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
  assert "step 4/10" in result.stdout, result.stdout[-2000:]
  # TensorFlow's and libtpu's start-up lines dropped
  assert not cli.START_UP_NOISE.search(result.stdout + result.stderr), result.stderr[:3000]
  ckpts = os.path.join(model_dir, "checkpoints")
  assert any(name.startswith("4.") for name in os.listdir(ckpts))  # the half-written step, never committed
  assert checkpoints.locate(ckpts)[1] == 2
  params, _, _, _ = checkpoints.restore(ckpts)
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(params))
  lines = run_in_process(model_dir, 4, "--gin.CheckpointConfig.period=2")
  assert f"resumed from {ckpts}/2" in lines
  assert "restored the input position at step 2" in lines
  assert checkpoints.locate(ckpts)[1] == 4


def test_nan_stops_training_and_keeps_last_good_checkpoint(two_steps, tmp_path):
  model_dir = _copy(two_steps, tmp_path)
  # An infinite learning rate makes step 3's update Inf; step 3 must not be saved.
  with pytest.raises(train.TrainingDiverged, match=r"the update made the parameters NaN or Inf at step 3; training "
                                                   r"stopped, the last good checkpoint is kept \(step 2\)"):
    run_in_process(model_dir, 6, "--gin.CheckpointConfig.period=1", "--gin.LEARNING_RATE=1e999")
  ckpts = os.path.join(model_dir, "checkpoints")
  assert checkpoints.locate(ckpts)[1] == 2
  params, _, _, _ = checkpoints.restore(ckpts)
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(params))


def test_refuses_checkpoint_of_another_model(two_steps, tmp_path):
  model_dir = _copy(two_steps, tmp_path)
  with pytest.raises(UserError, match="d_model: 32 != 64"):
    run_in_process(model_dir, 3, "--gin.T5Config.d_model=32")
  assert checkpoints.locate(os.path.join(model_dir, "checkpoints"))[1] == 2


def test_unknown_mixture_and_bad_microbatches(tmp_path):
  with pytest.raises(UserError, match="unknown task or mixture 'demo_mixtur'; closest: demo_mixture"):
    run_in_process(str(tmp_path / "a"), 1, "--gin.MIXTURE_OR_TASK_NAME='demo_mixtur'")
  with pytest.raises(UserError, match="must split into 3 microbatches"):
    run_in_process(str(tmp_path / "b"), 1, "--gin.StepConfig.num_microbatches=3")


def test_microbatches_equal_the_full_batch(two_steps, tmp_path):
  full, micro = two_steps, str(tmp_path / "micro")
  run_in_process(micro, 2, "--gin.StepConfig.num_microbatches=4")
  a, b = train_losses(full), train_losses(micro)
  assert abs(a[2] - b[2]) <= 1e-5
  assert params_difference(full, micro, 2) <= 1e-5


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- a new user's first hour: gin lookup, entry points, strict flags, prompt exits ---

def test_directories_named_like_gin_folders_in_the_working_directory(tmp_path, monkeypatch):
  """The demo writes runs/demo; a runs/ or models/ directory (even a Python package) in the working directory must
  not break `include 'runs/finetune.gin'` or `--gin_file=runs/demo.gin`."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs" / "demo").mkdir(parents=True)
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "__init__.py").write_text("")
  run_in_process("runs/demo", 2)
  assert checkpoints.locate(str(tmp_path / "runs" / "demo" / "checkpoints"))[1] == 2


def test_a_task_module_with_its_own_gin_configurable(tmp_path, monkeypatch):
  """MIXTURE_OR_TASK_MODULE is imported after the gin config is parsed and locked; its configurables still
  register."""
  (tmp_path / "my_gin_tasks.py").write_text(
      "import gin\nfrom flan_jax.data.registration import register_prompt_task\n"
      "from flan_jax.vocab import byte_vocabulary\n\n@gin.configurable\ndef my_rows(n=12):\n"
      "  return [{'inputs': f'say {i}', 'targets': str(i)} for i in range(n)]\n\n"
      "register_prompt_task('my_gin_task', {'train': my_rows()}, byte_vocabulary())\n")
  monkeypatch.chdir(tmp_path)
  run_in_process(str(tmp_path / "run"), 1, "--gin.MIXTURE_OR_TASK_MODULE='my_gin_tasks'",
                 "--gin.MIXTURE_OR_TASK_NAME='my_gin_task'", "--gin.DatasetConfig.pack=False")
  assert checkpoints.locate(str(tmp_path / "run" / "checkpoints"))[1] == 1


def test_python_dash_m_entry_point(tmp_path):
  """`python -m flan_jax COMMAND` reaches the same command line (every subprocess of these tests trains through it:
  tests/train_worker.py)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run([sys.executable, "-m", "flan_jax", "train", "--help"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
  assert result.returncode == 0 and result.stdout.startswith("usage: flan-jax train"), result.stderr[-2000:]


def _train_cli(capsys, *flags):
  code = cli.main(["train"] + list(flags))
  return code, capsys.readouterr().err.strip()


def test_misspelled_macro_is_an_error_naming_the_closest(tmp_path, capsys):
  model_dir = tmp_path / "run"
  code, err = _train_cli(capsys, *_bindings(str(model_dir), 1), "--gin.TRAIN_STEP=100")
  assert code == 2 and len(err.splitlines()) == 1
  assert err == ("flan-jax: error: gin binding --gin.TRAIN_STEP: no configurable refers to the macro TRAIN_STEP; "
                 "did you mean TRAIN_STEPS?")
  assert not model_dir.exists()


@pytest.mark.parametrize("flag, message", [
    ("--gin.BATCH_SIZE=0", "DatasetConfig.batch_size must be an integer >= 1, got 0"),
    ("--gin.TRAIN_STEPS=-1", "TRAIN_STEPS must be an integer >= 0, got -1"),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}", "TASK_FEATURE_LENGTHS must map 'inputs' and 'targets'"),
    ("--gin.DROPOUT_RATE=1.0", "DROPOUT_RATE must be in [0, 1), got 1.0"),
    ("--gin.EVAL_PERIOD=-5", "EvalConfig.period must be an integer >= 0, got -5"),
    ("--gin.CheckpointConfig.period=0", "CheckpointConfig.period must be an integer >= 1, got 0"),
    ("--gin.LEARNING_RATE=0", "LEARNING_RATE must be > 0"),
    ("--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/ckpt'", "INITIAL_CHECKPOINT_PATH /nonexistent/ckpt does not exist"),
])
def test_bad_settings_are_one_line_and_write_nothing(flag, message, tmp_path, capsys):
  model_dir = tmp_path / "run"
  code, err = _train_cli(capsys, *_bindings(str(model_dir), 2), flag)
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith("flan-jax: error: ")
  assert message in err
  assert not model_dir.exists()


def test_model_dir_that_is_a_file(tmp_path, capsys):
  (tmp_path / "afile").write_text("keep me")
  code, err = _train_cli(capsys, *_bindings(str(tmp_path / "afile"), 2))
  assert code == 2 and "is an existing file, not a directory" in err
  assert (tmp_path / "afile").read_text() == "keep me"


def test_a_crash_mid_training_ends_the_process_promptly(tmp_path):
  proc = run_subprocess(tmp_path / "run", 50, "--gin.CheckpointConfig.period=1", env={"FAIL_AT_STEP": "3"},
                        wait=False)
  crashed = None
  for line in proc.stdout:
    if "RuntimeError: injected failure after step 3" in line:
      crashed = time.time()
      break
  assert crashed, "the injected failure never surfaced"
  proc.wait(timeout=30)
  assert proc.returncode == 1
  assert time.time() - crashed < 30


def test_end_of_run_summary_averages_held_in_and_held_out_tasks_and_names_runnable_commands():
  evaluated = {f"eval/{task}/{k}": v for task, acc in [("demo_held_in", 0.9), ("demo_held_out_rules", 0.5),
                                                        ("demo_held_out_compositions", 0.3)]
               for k, v in [("loss", 0.1), ("token_accuracy", 0.95), ("accuracy", acc)]}
  lines = train._summary("runs/x", 0, 100, 75.0, {"loss": 0.25}, evaluated, "runs/x/loss_curve.png", False)
  text = "\n".join(lines)
  assert "done: steps 0 -> 100 in 1m15s, final train loss 0.2500" in text
  assert re.search(r"held-in average\s+90\.0%", text) and re.search(r"held-out average \(never trained on\)\s+40\.0%", text)
  assert "flan-jax infer --checkpoint runs/x/checkpoints --task demo_held_in --output predictions.jsonl" in text
  assert ("flan-jax eval --checkpoint runs/x/checkpoints --tasks demo_held_in demo_held_out_compositions "
          "demo_held_out_rules") in text

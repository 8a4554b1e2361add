"""Launch helpers and the memory planner run without the hardware: they print what they would do."""

import os
import re
import runpy
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*cmd, env=None):
  return subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def _run_here(script, *args, monkeypatch, capsys):
  """A Python script run in this process, as `python SCRIPT ARGS` would: its output. Saves a process start (and
  its imports of JAX, torch and transformers) for scripts that need no fresh process."""
  monkeypatch.setattr(sys, "argv", [script, *args])
  monkeypatch.chdir(REPO)
  monkeypatch.syspath_prepend(os.path.join(REPO, os.path.dirname(script)))  # as python puts the script's folder
  capsys.readouterr()
  runpy.run_path(os.path.join(REPO, script), run_name="__main__")
  return capsys.readouterr().out


def test_tpu_vm_script_prints_one_command_for_every_worker():
  out = _run("bash", "scripts/tpu_vm.sh", "my-tpu", "us-central2-b", "https://example.invalid/flan-jax.git", "--",
             "train", "--gin_file=models/xxl.gin", "--gin.MODEL_DIR='gs://bucket/run'")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 2 and all("--worker=all" in line for line in lines)
  assert ("FLAN_JAX_DISTRIBUTED=auto scripts/rerun_on_preemption.sh .venv/bin/flan-jax train "
          "--gin_file=models/xxl.gin") in lines[1]


def test_gpu_node_script_sets_the_coordinator_for_multi_node():
  out = _run("bash", "scripts/gpu_node.sh", "--nodes", "2", "--node_rank", "1", "--coordinator", "10.0.0.1:1234",
             "--", "train", "--gin_file=models/xl.gin")
  assert out.returncode == 0, out.stderr
  assert ("FLAN_JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 FLAN_JAX_NUM_PROCESSES=2 FLAN_JAX_PROCESS_ID=1 "
          "scripts/rerun_on_preemption.sh .venv/bin/flan-jax train --gin_file=models/xl.gin") in out.stdout
  assert _run("bash", "scripts/gpu_node.sh", "--nodes", "2", "--", "train").returncode == 2
  assert _run("bash", "-n", "scripts/slurm.sbatch").returncode == 0


def test_launchers_run_again_after_the_preemption_exit_code(tmp_path):
  """A job preempted twice (exit 75) runs three times, then ends with its own code; any other code ends it at once.
  Under Slurm (srun and scontrol stubbed) a preempted job requeues itself."""
  runs = tmp_path / "runs"
  job = f"echo run >> {runs}; [ $(wc -l < {runs}) -ge 3 ] || exit 75"
  out = _run("bash", "scripts/rerun_on_preemption.sh", "bash", "-c", job)
  assert out.returncode == 0 and runs.read_text().count("run") == 3, out.stderr
  assert out.stderr.count("preempted (exit 75): running the same command again") == 2
  assert _run("bash", "scripts/rerun_on_preemption.sh", "bash", "-c", "exit 1").returncode == 1
  stubs = tmp_path / "bin"
  stubs.mkdir()
  (stubs / "srun").write_text("#!/bin/sh\nexit 75\n")
  (stubs / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol'}\n")
  for stub in stubs.iterdir():
    stub.chmod(0o755)
  out = _run("bash", "scripts/slurm.sbatch", env={"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
                                                  "SLURM_SUBMIT_DIR": REPO})
  assert out.returncode == 75 and "preempted (exit 75): requeueing job 42" in out.stdout, out.stderr
  assert (tmp_path / "scontrol").read_text().strip() == "requeue 42"


def test_memory_plan_for_xxl_on_v5e():
  out = _run(sys.executable, "scripts/plan_memory.py", "--size", "xxl", "--mesh", "4x16", "--device_gib", "16")
  assert out.returncode == 0, out.stderr
  row = [line for line in out.stdout.splitlines() if line.startswith("| xxl")][0]
  # 11,135,332,352 float32 parameters over 16-way model parallelism: about 2.6 GiB a device, as many for grads.
  assert "| xxl (11.14B) | given | 4 x 16 | 2.59 GiB | 2.59 GiB |" in row


def test_lora_benchmark_runs_on_a_tiny_model():
  out = _run(sys.executable, "scripts/bench_lora.py", "--tiny", "--shape", "32/8", "--steps", "1")
  assert out.returncode == 0, out.stderr
  rows = [line for line in out.stdout.splitlines() if line.startswith("| full") or line.startswith("| LoRA")]
  full, adapted = (int(row.split("|")[2].replace(",", "")) for row in rows)
  assert adapted < full / 100  # the adapters are a small fraction of the parameters


def test_train_and_decode_benchmarks_run_on_a_tiny_model(monkeypatch, capsys):
  out = _run(sys.executable, "scripts/bench_train.py", "--tiny", "--shapes", "32/8", "--batch", "2", "--steps", "1")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "| 32/8 | flan-jax |" in out.stdout and "ratio (transformers + HF Adafactor s/step / flan-jax s/step)" in out.stdout
  out = _run_here("scripts/bench_decode.py", "--tiny", "--batch", "2", "--input_length", "8", "--new_tokens", "4",
                  "--repeats", "1", monkeypatch=monkeypatch, capsys=capsys)
  assert out.count("ratio flan-jax / transformers") == 4  # greedy, beam, scoring (two peers)
  assert out.count("ratio flan-jax / flan-jax with XLA's default dots") == 2  # greedy, beam
  assert "Greedy (2/2 rows identical" in out and "Beam search, 4 beams (2/2 rows identical" in out
  difference = float(re.search(r"max difference ([0-9.e+-]+)", out).group(1))
  assert difference < 1e-4
  out = _run_here("scripts/bench_matmul.py", "--tiny", "--tokens", "64", "--decode_dots", monkeypatch=monkeypatch,
                  capsys=capsys)
  rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "GFLOP/s" not in line]
  # GFLOP/s of a tiny matmul may print as 0; the XLA / torch ratio comes from the unrounded times.
  assert len(rows) == 6 and all(float(row[4].strip().rstrip("x")) > 0 for row in rows), out


def test_tpu_vm_script_sets_the_callers_flan_jax_variables_on_every_worker():
  """The Flan collection, the vocabulary and the held-out data are found on the workers from these variables."""
  env = {"FLAN_JAX_FLAN_COLLECTION": "gs://bucket/flan", "FLAN_JAX_VOCAB": "/data/spiece.model"}
  out = _run("bash", "scripts/tpu_vm.sh", "my-tpu", "us-central2-b", "https://example.invalid/flan-jax.git", "--",
             "train", "--gin_file=runs/flan_t5_xl.gin", env=env)
  assert out.returncode == 0, out.stderr
  job = out.stdout.splitlines()[1]
  assert "FLAN_JAX_FLAN_COLLECTION=gs://bucket/flan " in job and "FLAN_JAX_VOCAB=/data/spiece.model " in job
  assert job.count("FLAN_JAX_DISTRIBUTED=") == 1


def test_gpu_check_runs_on_a_tiny_model_without_the_data_stack(tmp_path):
  """scripts/gpu_check.sh, as on the GPU machine, which has no TensorFlow, seqio or TFDS (blocked here by a
  sitecustomize its subprocesses inherit): parity, the train step against transformers, decoding."""
  from test_imports import BLOCK_DATA_STACK
  (tmp_path / "sitecustomize.py").write_text(BLOCK_DATA_STACK)
  out = _run("bash", "scripts/gpu_check.sh", "--tiny",
             env={"PYTHON": sys.executable, "OUT": str(tmp_path), "PYTHONPATH": str(tmp_path)})
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  table = (tmp_path / "gpu_check.md").read_text()
  difference = float(re.search(r"max abs difference ([0-9.e+-]+) \| ok", table).group(1))
  assert difference <= 1e-4 and "| greedy tokens, 8 rows x 16 | 8/8 rows identical | ok |" in table
  train = [row.split("|") for row in table.splitlines() if row.startswith("| small | 32/8 x 2 |")]
  assert [row[3].strip() for row in train] == ["flan-jax", "transformers (SDPA, HF Adafactor)",
                                               "ratio transformers / flan-jax"], table
  assert all(float(row[4]) > 0 for row in train[:2]), table  # both stepped: no "failed" row
  assert re.search(r"\| greedy \| [0-9.]+ \| [0-9.]+ \| \*\*[0-9.]+x\*\* \| 2/2 \|", table), table
  assert re.search(r"\| beam search, 2 beams \| .* \| 2/2 \|", table), table

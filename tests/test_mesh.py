"""Other meshes: training on a 4x2 mesh of 8 fake devices equals one device; inference, scoring and export sharded
over them equal one device; and a checkpoint written on 4x2 trains on, restores and exports from 1x8 and one device."""

import json
import os

import numpy as np
import pytest

from flan_jax import checkpoints, cli
from test_train import _bindings, _free_port, _params, params_difference, run_cli, run_in_process, run_subprocess, train_losses

HEADS = "--gin.T5Config.num_heads=8"  # the demo model with 8 heads, so that 'model' can be 8 ways
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
MESH_2x4 = ["--gin.make_mesh.data_parallel=2", "--gin.make_mesh.model_parallel=4"]
ONE_DEVICE = ["--gin.make_mesh.data_parallel=1", "--gin.make_mesh.model_parallel=1"]


SHARDED_DECODES = {"greedy": [], "beam": ["--beam_size", "3"], "score": ["--mode", "score"]}


@pytest.fixture(scope="module")
def run_on_4x2(tmp_path_factory):
  """One process with 8 fake devices: the demo model trained for 2 steps on a 4x2 mesh, then its checkpoint decoded
  (SHARDED_DECODES) and exported to HuggingFace on a 2x4 mesh. Its run directory, the folder holding the decodes
  and the export, and the process's output."""
  root = tmp_path_factory.mktemp("mesh")
  model_dir, ckpt = root / "run", str(root / "run" / "checkpoints")
  commands = ["train", *_bindings(model_dir, 2, "--gin.make_mesh.data_parallel=4", "--gin.make_mesh.model_parallel=2",
                                  HEADS)]
  for name, flags in SHARDED_DECODES.items():
    commands += ["--then", *_infer_args(ckpt, root / f"{name}.jsonl"), *flags, *MESH_2x4]
  commands += ["--then", "export-hf", "--checkpoint", ckpt, "--out", str(root / "hf"), *MESH_2x4]
  result = run_cli(*commands, env=EIGHT)
  assert result.returncode == 0, result.stdout + result.stderr
  return str(model_dir), root, result.stdout + result.stderr


@pytest.fixture(scope="module")
def trained_on_4x2(run_on_4x2):
  return run_on_4x2[0]


@pytest.fixture(scope="module")
def greedy_on_one_device(trained_on_4x2, tmp_path_factory):
  """What the sharded and the 2-process greedy decodes are compared with."""
  return _infer(os.path.join(trained_on_4x2, "checkpoints"), tmp_path_factory.mktemp("one") / "one.jsonl")


def _infer_args(checkpoint, out):
  return ["infer", "--checkpoint", str(checkpoint), "--task", "demo_held_out_rules", "--max_examples", "8",
          "--batch_size", "8", "--inputs_length", "64", "--max_decode_length", "16", "--output", str(out)]


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def _infer(checkpoint, out, *flags):
  """On this process's one CPU device."""
  assert cli.main(_infer_args(checkpoint, out) + list(flags) + ONE_DEVICE) == 0
  return _rows(out)


@pytest.mark.parametrize("name", sorted(SHARDED_DECODES))
def test_inference_sharded_over_2x4_equals_one_device(run_on_4x2, greedy_on_one_device, name, tmp_path):
  flags = SHARDED_DECODES[name]
  ckpt = os.path.join(run_on_4x2[0], "checkpoints")
  one = _infer(ckpt, tmp_path / "one.jsonl", *flags) if flags else greedy_on_one_device
  sharded = _rows(run_on_4x2[1] / f"{name}.jsonl")
  assert len(one) == len(sharded) == 8
  if "score" in flags:
    a, b = (np.array([r["log_likelihood"] for r in rows]) for rows in (one, sharded))
    assert np.all(a < 0) and np.max(np.abs(a - b)) <= 1e-5
  else:
    assert [r["prediction"] for r in one] == [r["prediction"] for r in sharded]
    assert len({r["prediction"] for r in one}) > 1


def test_infer_with_two_processes_equals_one(trained_on_4x2, greedy_on_one_device, tmp_path):
  """2 processes x 2 devices decode on one 1x4 mesh (the model axis across them): process 0 writes the same
  predictions as one process on one device."""
  ckpt = os.path.join(trained_on_4x2, "checkpoints")
  port = _free_port()
  procs = [run_cli("infer", "--checkpoint", ckpt, "--task", "demo_held_out_rules", "--max_examples", "8",
                   "--batch_size", "8", "--inputs_length", "64", "--max_decode_length", "16",
                   "--output", str(tmp_path / "two.jsonl"),
                   "--gin.make_mesh.data_parallel=1", "--gin.make_mesh.model_parallel=4",
                   f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}, wait=False)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
  assert [r["prediction"] for r in two] == [r["prediction"] for r in greedy_on_one_device]


def test_export_from_sharded_params_is_byte_identical(run_on_4x2, tmp_path):
  ckpt = os.path.join(run_on_4x2[0], "checkpoints")
  assert cli.main(["export-hf", "--checkpoint", ckpt, "--out", str(tmp_path / "one")]) == 0  # this process's device
  one, sharded = ((path / "model.safetensors").read_bytes() for path in (tmp_path / "one", run_on_4x2[1] / "hf"))
  assert one == sharded
  from safetensors.numpy import load_file
  tensors = load_file(str(tmp_path / "one" / "model.safetensors"))
  params = checkpoints.restore(ckpt)[0]
  assert np.array_equal(tensors["lm_head.weight"], np.asarray(params["decoder"]["logits_dense"]["kernel"]).T)


def test_training_on_4x2_equals_one_device(run_on_4x2, tmp_path):
  """The same 2 steps on 8 fake CPU devices as a 4x2 mesh and on this process's one device."""
  model_dir, _, output = run_on_4x2
  one = str(tmp_path / "one")
  lines = run_in_process(one, 2, HEADS, "--gin.make_mesh.data_parallel=1")
  assert any(line.startswith("mesh data=1 model=1 over 1 of ") for line in lines)
  assert "mesh data=4 model=2 over 8 of 8 devices" in output
  assert not cli.START_UP_NOISE.search(output), output[:3000]  # TensorFlow's start-up lines are dropped
  # Parameters really are split over 'model' (t5x rules: vocab, mlp, heads/joined_kv on 'model').
  assert "decoder/logits_dense/kernel P(None, 'model')" in output
  assert "encoder/layers_0/mlp/wi_0/kernel P(None, 'model')" in output
  a, b = train_losses(one), train_losses(model_dir)
  assert sorted(a) == sorted(b) == [1, 2]
  assert max(abs(a[s] - b[s]) for s in a) <= 1e-5, (a, b)
  assert a[2] < a[1]
  assert params_difference(one, model_dir, 2) <= 1e-5


def test_a_4x2_checkpoint_resumes_on_1x8_then_on_one_device(trained_on_4x2, tmp_path):
  import shutil
  model_dir = str(tmp_path / "run")
  shutil.copytree(trained_on_4x2, model_dir)
  result = run_subprocess(model_dir, 4, "--gin.make_mesh.data_parallel=1", "--gin.make_mesh.model_parallel=8",
                          HEADS, env=EIGHT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "resumed from" in result.stdout and "mesh data=1 model=8" in result.stdout
  lines = run_in_process(model_dir, 6, HEADS, "--gin.make_mesh.data_parallel=1")  # this process's one device
  assert any(line.startswith("mesh data=1 model=1 over 1 of ") for line in lines)
  assert sorted(train_losses(model_dir)) == [1, 2, 3, 4, 5, 6]
  assert all(np.all(np.isfinite(np.asarray(p))) for p in _params(model_dir, 6))


def test_a_model_axis_that_does_not_divide_the_heads_is_one_clear_error():
  from flan_jax import partitioning
  from flan_jax.errors import UserError
  from flan_jax.models import T5Config
  from flan_jax.models.t5 import abstract_variables
  import flax.linen as nn
  boxed = abstract_variables(T5Config(vocab_size=384, d_model=64, d_ff=128, num_heads=4, d_kv=16,
                                      num_encoder_layers=1, num_decoder_layers=1))["params"]
  specs = partitioning.param_specs(boxed)
  partitioning.check_divisible(nn.unbox(boxed), specs, {"data": 1, "model": 4})
  with pytest.raises(UserError, match=r"decoder/relpos_bias/rel_embedding has a dimension of 4, which the mesh's "
                                      r"P\('model', None\) cannot split 8 ways"):
    partitioning.check_divisible(nn.unbox(boxed), specs, {"data": 1, "model": 8})

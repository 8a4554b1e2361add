"""`flan-jax plan`: the real train step compiled for Cloud TPU topologies on this CPU machine (libtpu's compiler,
no TPU), with per-chip memory checked against the sizes of what the step holds."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from flan_jax import cli, partitioning, plan, trainer
from flan_jax.errors import UserError
from flan_jax.models import T5Config, t5
from flan_jax.models.t5 import abstract_variables
from flan_jax.optim import adafactor
from flan_jax.settings import DatasetConfig, EvalConfig, StepConfig

# Dimensions that are multiples of 128, so TPU tile padding adds next to nothing to the per-chip sizes. One decoder
# layer: libtpu's compile time grows with the layers (2+2 took 14-16 s, 2+1 9 s; with 1+1 XLA reports no
# temporaries at all).
TINY = T5Config(vocab_size=1024, d_model=256, d_ff=512, num_heads=4, d_kv=64, num_encoder_layers=2,
                num_decoder_layers=1)
LENGTHS = {"inputs": 128, "targets": 128}


@functools.cache
def _tiny_step(name, data, model):
  """TINY's train step (batch 32, default gin settings) compiled for `name` as data x model; several tests read it."""
  return plan.compile_step(TINY, adafactor(), plan.topology_devices(name), plan.TOPOLOGIES[name], data, model,
                           batch_size=32, lengths=LENGTHS)


def _bytes(tree, specs, mesh_shape):
  return partitioning.per_device_bytes(tree, specs, mesh_shape)


@pytest.mark.parametrize("name, data, model", [("v4-8", 4, 1), ("v5e-16", 4, 4)])
def test_compiled_arguments_are_the_sharded_state_and_batch(name, data, model):
  tx = adafactor()
  devices = plan.topology_devices(name)
  result = _tiny_step(name, data, model)
  assert result.error is None and result.fits
  assert result.chips == len(devices) == data * model
  # What one chip holds of the inputs: its shard of parameters and Adafactor state, its rows of the 8 batch
  # features, the step counter and the dropout key. The whole state's size comes from flax and optax directly
  # (not from the project's shardings): one chip holds all of it without model parallelism, a 1/model share of
  # everything the model axis splits with it.
  params = nn.unbox(abstract_variables(TINY))["params"]
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, jax.eval_shape(tx.init, params))))
  batch_bytes = 4 * (32 // data) * (3 * LENGTHS["inputs"] + 5 * LENGTHS["targets"]) + 4 + 8
  if model == 1:
    assert abs(result.arguments - (state_bytes + batch_bytes)) <= 0.01 * state_bytes + 1024
  else:  # every kernel is split over 'model' (T5X's rules); the layer-norm scales and relative-position biases
    # are not, a few percent of TINY
    assert state_bytes / model + batch_bytes <= result.arguments <= 1.1 * state_bytes / model + batch_bytes
  mesh = partitioning.make_mesh(data, model, devices=devices)
  shardings = trainer.Shardings(TINY, tx, mesh)
  assert result.temporaries > 0 and result.flops > 0
  if model == 1:  # pure data parallelism: one gradient all-reduce of the parameters' size, nothing else
    param_bytes = 4 * sum(x.size for x in jax.tree.leaves(shardings.abstract_params))
    assert set(result.collectives) == {"all-reduce"}, result.collectives
    assert param_bytes <= result.collectives["all-reduce"][1] <= 1.1 * param_bytes
    # Two microbatches do the same work in a loop, whose body XLA counts once: plan counts it per microbatch.
    halves = plan.compile_step(TINY, tx, devices, plan.TOPOLOGIES[name], data, model, batch_size=32,
                               lengths=LENGTHS, microbatches=2)
    assert abs(halves.flops - result.flops) <= 0.1 * result.flops, (halves.flops, result.flops)


def test_lora_adapters_add_no_all_reduce_of_their_own(monkeypatch):
  """q/v adapters on kernels split over 'model': the adapters' input gradients are summed with the kernels' before
  the one all-reduce (models/t5.py), instead of forcing the kernels' shares to be all-reduced apart."""
  lora = dataclasses.replace(TINY, lora_rank=8, num_decoder_layers=2)  # 2 decoder layers: a 24% saving (1: 16%)
  compile_on_4x4 = lambda config: plan.compile_step(config, adafactor(), plan.topology_devices("v5e-16"),
                                                    plan.TOPOLOGIES["v5e-16"], 4, 4, batch_size=32, lengths=LENGTHS)
  ours = compile_on_4x4(lora).collectives["all-reduce"]
  monkeypatch.setattr(t5, "_model_ways", lambda: 1)  # autodiff's order, as without a 'model' split
  autodiff = compile_on_4x4(lora).collectives["all-reduce"]
  assert ours[0] <= autodiff[0] and ours[1] <= 0.8 * autodiff[1], (ours, autodiff)


def test_decode_step_holds_only_the_sharded_parameters_and_inputs():
  devices = plan.topology_devices("v5e-16")
  result = plan.compile_decode(TINY, devices, plan.TOPOLOGIES["v5e-16"], 4, 4, batch_size=32, lengths=LENGTHS)
  assert result.error is None and result.fits and result.flops > 0
  mesh = partitioning.make_mesh(4, 4, devices=devices)
  target = partitioning.restore_target(TINY, mesh)
  specs = jax.tree.map(lambda a: a.sharding.spec, target)
  expected = _bytes(target, specs, dict(mesh.shape)) + 4 * (32 // 4) * LENGTHS["inputs"] + 8
  assert abs(result.arguments - expected) <= 0.01 * expected + 1024, (result.arguments, expected)


def test_an_oversized_step_is_reported_as_not_fitting():
  devices = plan.topology_devices("v5e-16")
  result = plan.compile_step(TINY, adafactor(), devices, plan.TOPOLOGIES["v5e-16"], 16, 1, batch_size=16 * 4096,
                             lengths={"inputs": 2048, "targets": 512})
  assert not result.fits
  assert result.error and ("RESOURCE_EXHAUSTED" in result.error or "memory" in result.error.lower()), result.error


def test_unknown_topology_and_missing_compiler(monkeypatch):
  with pytest.raises(UserError, match="unknown topology 'v9-8'"):
    plan.topology_devices("v9-8")
  import importlib.util
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError, match=r"needs the TPU compiler \(libtpu\): .venv/bin/pip install -e '.\[tpu\]'"):
    plan.topology_devices("v4-8")


def test_plan_cli_on_v5e_16(capsys):
  """One topology (each compile costs the suite time; test_compiled_arguments_... covers v4-8 too)."""
  code = cli.main(["plan", "--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin",
                   "--gin.T5Config.vocab_size=384", "--gin.T5Config.num_decoder_layers=1",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 32}", "--gin.BATCH_SIZE=16",
                   "--topology", "v5e-16", "--mesh", "auto"])
  out = capsys.readouterr()
  assert code == 0, out.err[-3000:]
  lines = out.out.splitlines()
  assert "v5e-16: 16 chips, 4 hosts x 4; mesh data=16 x model=1, remat=False, microbatches=1; 4 rows per host" in lines
  fits = [line for line in lines if "GiB HBM" in line]
  assert len(fits) == 1 and fits[0].endswith(": fits") and re.search(r"of 16 GiB HBM", fits[0])
  decode = [line for line in lines if line.startswith("  decode (infer/eval, greedy, batch 32, 128 in, up to 32 new): ")]
  assert len(decode) == 1 and "GiB per chip" in decode[0]


def test_auto_reports_the_first_setting_that_fits_when_none_is_within_75_percent(monkeypatch):
  """Compiles faked: the first candidate runs out of memory, the others need 90% or more of HBM."""
  from flan_jax import train  # noqa: F401  (registers the gin settings plan reads)
  hbm = plan.TOPOLOGIES["v4-8"].hbm_gib * plan.GIB
  fractions = iter([None, 0.95, 0.9] + [0.99] * 100)  # share of HBM per candidate; None: out of memory

  def fake_compile(config, tx, devices, topology, data, model, batch_size, lengths, micro, *rest):
    fraction = next(fractions)
    return plan.Plan(topology, data, model, config.remat, micro, chips=len(devices), hosts=1,
                     error=None if fraction else "RESOURCE_EXHAUSTED", total=int((fraction or 0) * hbm))

  monkeypatch.setattr(plan, "compile_step", fake_compile)
  monkeypatch.setattr(plan, "compile_decode", lambda *a, **k: plan.Plan(a[2], 1, 1, False, 1, error="skipped"))
  lines = []
  [result] = plan.plan(["v4-8"], auto=True, log_fn=lines.append)
  assert result.fits and result.total == int(0.95 * hbm)  # the first that fits at all, not the first tried
  assert "  no setting fits within 75% of HBM; showing the first that fits" in lines


def test_factored_adafactor_statistics_are_sharded_like_their_axis():
  """Square kernels (q/k/v/o from base to xxl) factor axes (0, 1) in optax: v_row keeps axis 0, v_col axis 1;
  each statistic is sharded like the parameter axis it keeps."""
  config = T5Config(vocab_size=1024, d_model=256, d_ff=512, num_heads=4, d_kv=64, num_encoder_layers=1,
                    num_decoder_layers=1)
  tx = adafactor()
  mesh = partitioning.make_mesh(1, 1)
  shardings = trainer.Shardings(config, tx, mesh)
  state = shardings.abstract_opt_state
  factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row")) if hasattr(s, "v_row")][0]
  query = ("encoder", "layers_0", "attention", "query", "kernel")   # (256, 256): embed x joined_kv
  mlp_out = ("encoder", "layers_0", "mlp", "wo", "kernel")          # (512, 256): mlp x embed
  get = lambda tree, path: tree if not path else get(tree[path[0]], path[1:])
  specs = jax.tree.map(lambda s: s.spec, shardings.opt_state)
  fspecs = [s for s in jax.tree.leaves(specs, is_leaf=lambda x: hasattr(x, "v_row")) if hasattr(s, "v_row")][0]
  assert get(factored.v_row, query).shape == (256,) and get(factored.v_col, query).shape == (256,)
  assert get(fspecs.v_row, query) == jax.sharding.PartitionSpec(None)       # keeps axis 0: embed
  assert get(fspecs.v_col, query) == jax.sharding.PartitionSpec("model")    # keeps axis 1: joined_kv
  # (512, 256): the largest axis (0, mlp) is d0, so v_row keeps embed and v_col keeps mlp
  assert get(fspecs.v_row, mlp_out) == jax.sharding.PartitionSpec(None)
  assert get(fspecs.v_col, mlp_out) == jax.sharding.PartitionSpec("model")


def _loss_and_grads(config, params, batch):
  from flan_jax.trainer import batch_metrics
  loss, grads = jax.jit(jax.value_and_grad(lambda p: batch_metrics(config, p, batch, 1e-4)[0]))(params)
  return float(loss), grads


def test_bfloat16_and_remat_match_float32_and_compile_for_tpu():
  """bf16 activations: loss within 1% and gradients within 5% (relative, global norm of the difference) of
  float32, parameters and gradients stay float32; remat: the same loss and gradients within 1e-6."""
  import flax.linen as nn
  from flan_jax.models.t5 import init_variables
  config = T5Config(vocab_size=384, d_model=64, d_ff=128, num_heads=4, d_kv=16, num_encoder_layers=2,
                    num_decoder_layers=2)
  params = nn.unbox(init_variables(config, jax.random.key(0)))["params"]
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 300, (4, 24)).astype(np.int32)
  batch = {"encoder_input_tokens": tokens, "decoder_target_tokens": tokens[:, :12],
           "decoder_input_tokens": np.pad(tokens[:, :11], ((0, 0), (1, 0))),
           "decoder_loss_weights": np.ones((4, 12), np.int32)}
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))
  diff = lambda a, b: norm(jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b))
  loss32, grads32 = _loss_and_grads(config, params, batch)
  loss16, grads16 = _loss_and_grads(dataclasses.replace(config, dtype="bfloat16"), params, batch)
  assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
  assert diff(grads16, grads32) <= 0.05 * norm(grads32)
  assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads16))
  loss_remat, grads_remat = _loss_and_grads(dataclasses.replace(config, remat=True), params, batch)
  assert abs(loss_remat - loss32) <= 1e-6 * abs(loss32) and diff(grads_remat, grads32) <= 1e-6 * norm(grads32)
  tpu = dataclasses.replace(TINY, dtype="bfloat16", remat=True)
  result = plan.compile_step(tpu, adafactor(), plan.topology_devices("v4-8"), plan.TOPOLOGIES["v4-8"], 4, 1,
                             batch_size=32, lengths=LENGTHS)
  assert result.error is None and result.fits


def test_parameters_over_data_shard_weights_and_optimizer_state_over_both_axes():
  """t5x's 2-D parameter partitioning: each chip holds about 1/(data x model) of the state, not 1/model."""
  import gin
  devices = plan.topology_devices("v5e-16")
  args = {}
  for over_data in (False, True):
    gin.bind_parameter("logical_axis_rules.parameters_over_data", over_data)
    result = _tiny_step("v5e-16", 4, 4) if not over_data else plan.compile_step(
        TINY, adafactor(), devices, plan.TOPOLOGIES["v5e-16"], 4, 4, batch_size=32, lengths=LENGTHS)
    assert result.error is None and result.fits and result.parameters_over_data == over_data
    args[over_data] = result.arguments
  assert "parameters over data" in result.lines(32)[0]
  weights = 4 * sum(x.size for x in jax.tree.leaves(abstract_variables(TINY)["params"]))
  assert args[False] - args[True] > 0.5 * weights / 4  # most of the quarter of the weights a chip held is gone
  specs = partitioning.param_specs(abstract_variables(TINY)["params"])
  assert specs["encoder"]["layers_0"]["attention"]["query"]["kernel"] == jax.sharding.PartitionSpec("data", "model")


# --- the per-size Flan-T5 presets, gin/runs/flan_t5_<size>.gin ---

# size -> (Table 22's steps, its smallest slice, data x model there, remat, microbatches, parameters over data).
PRESETS = {"small": (98_000, "v4-8", (4, 1), False, 1, False), "base": (84_000, "v4-8", (4, 1), True, 1, False),
           "large": (64_000, "v4-8", (4, 1), True, 1, False), "xl": (38_000, "v4-8", (1, 4), True, 4, False),
           "xxl": (14_000, "v4-32", (2, 8), True, 2, True)}
D_MODEL = {"small": 512, "base": 768, "large": 1024, "xl": 2048, "xxl": 4096}
CHIPS = {"v4-8": 4, "v4-32": 16}


def _preset(size):
  from flan_jax import gin_utils, train  # noqa: F401  (train: registers the configurables the presets bind)
  gin_utils.parse([f"runs/flan_t5_{size}.gin"], [], finalize=False)


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_flan_t5_preset_binds_table_22_and_its_mesh(size):
  import gin
  steps, topology, (data, model), remat, microbatches, over_data = PRESETS[size]
  _preset(size)
  data_cfg, step_cfg, eval_cfg = DatasetConfig(), StepConfig(), EvalConfig()  # as train() and plan build them
  assert gin.get_bindings("train")["train_steps"] == steps and data_cfg.batch_size == 64
  assert data_cfg.task_feature_lengths == {"inputs": 2048, "targets": 512} and data_cfg.pack is True
  assert step_cfg.z_loss == 1e-4 and data_cfg.mixture_or_task_name == "flan2022"
  assert gin.get_bindings("adafactor") == {"learning_rate": 5e-4, "warmup_steps": 0}  # constant
  config = T5Config()
  assert config.dropout_rate == 0.05 and config.dtype == "bfloat16" and config.d_model == D_MODEL[size]
  # Held-out eval picks the best checkpoint; mixture names are evaluated task by task (evaluation.evaluate_task).
  assert eval_cfg.tasks == ("mmlu", "bbh_direct") and eval_cfg.split == "test"
  assert eval_cfg.best_metric == "eval/average/accuracy" and eval_cfg.period > 0 and eval_cfg.max_examples
  # The settings `flan-jax plan` found to fit the smallest slice (README, BENCHMARKS.md).
  assert plan._gin_mesh(CHIPS[topology]) == (data, model)
  assert config.remat == remat and step_cfg.num_microbatches == microbatches
  assert partitioning.logical_axis_rules() == partitioning.logical_axis_rules(over_data)


# Each preset's mesh, remat, microbatches, bf16 and batch on its slice, compiled through `flan-jax plan` at TINY's
# size (with 8 heads of 32, which 'model' = 8 splits). Compiles are slow on a 2-core machine, so only xxl, whose
# settings (2 x 8, parameters over 'data', 2 microbatches) are the ones no other test compiles: small, base and
# large run data parallel (4 x 1) on a v4-8, as test_compiled_arguments_are_the_sharded_state_and_batch (float32)
# and test_bfloat16_and_remat_match_float32_and_compile_for_tpu (bf16 with remat) compile, and xl's microbatches
# and model axis are compiled by the other microbatch and mesh tests; the test above checks what each binds.
@pytest.mark.parametrize("size", ["xxl"])
def test_flan_t5_preset_compiles_for_its_slice(size, capsys):
  _, topology, (data, model), remat, microbatches, over_data = PRESETS[size]
  shrink = {**{k: getattr(TINY, k) for k in ("vocab_size", "d_model", "d_ff", "num_encoder_layers",
                                            "num_decoder_layers")}, "num_heads": 8, "d_kv": 32}
  code = cli.main(["plan", f"--gin_file=runs/flan_t5_{size}.gin", "--topology", topology,
                   f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"] + [f"--gin.T5Config.{k}={v}" for k, v in shrink.items()])
  out = capsys.readouterr()
  assert code == 0, out.err[-3000:]
  lines = out.out.splitlines()
  rows = 64 // (CHIPS[topology] // 4)  # 4 chips a host
  assert lines[0].startswith(f"{topology}: ") and (
      f"mesh data={data} x model={model}, remat={remat}, microbatches={microbatches}"
      f"{', parameters over data' if over_data else ''}; {rows} rows per host") in lines[0], lines[0]
  assert lines[1].endswith(": fits"), lines[1]
  assert "decode (infer/eval" in out.out and "does not fit" not in out.out


class _Stop(Exception):
  pass


def test_plan_compiles_the_step_train_would_run(tmp_path, monkeypatch):
  """plan and train() build the same settings objects from the same gin: the model, batch, lengths, microbatches and
  loss settings plan compiles with are the ones train runs (each set away from its default here)."""
  from flan_jax import gin_utils, train
  from flan_jax.data import pipeline
  gin_utils.parse(["runs/demo.gin"], [
      f"MODEL_DIR = '{tmp_path / 'run'}'", "BATCH_SIZE = 16", "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 32}",
      "StepConfig.num_microbatches = 2", "StepConfig.z_loss = 0.001", "LOSS_NORMALIZING_FACTOR = 1024.0",
      "EVAL_TASKS = []", "make_mesh.data_parallel = 1"])
  seen = {}

  def plan_step(config, tx, devices, topology, data, model, batch_size, lengths, microbatches, z_loss,
                loss_normalizing_factor):
    seen["plan"] = (config, batch_size, lengths, microbatches, z_loss, loss_normalizing_factor)
    raise _Stop

  monkeypatch.setattr(plan, "compile_step", plan_step)
  with pytest.raises(_Stop):
    plan.plan(["v4-8"], log_fn=lambda line: None)

  get_dataset = pipeline.get_dataset

  def recording_get_dataset(name, split, lengths, **kwargs):
    seen["train_data"] = (kwargs["batch_size"], lengths)
    return get_dataset(name, split, lengths, **kwargs)

  def train_step(config, tx, z_loss, loss_normalizing_factor, num_microbatches):
    seen["train"] = (config, *seen["train_data"], num_microbatches, z_loss, loss_normalizing_factor)
    raise _Stop

  monkeypatch.setattr(pipeline, "get_dataset", recording_get_dataset)
  monkeypatch.setattr(trainer, "make_train_step", train_step)
  with pytest.raises(_Stop):
    train.train(log_fn=lambda line: None)
  assert seen["plan"] == seen["train"]
  assert seen["plan"][1:] == (16, {"inputs": 64, "targets": 32}, 2, 0.001, 1024.0)

"""LoRA: trains adapters only on a frozen base, resumes exactly, and round-trips through peft itself."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import traverse_util

import hf_reference
from flan_jax import checkpoints, cli, gin_utils, inference, train
from flan_jax.models import T5

ALL_TARGETS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data):
  """A 2-layer HF model with Flan-T5-small's config at a narrow width (LoRA's maths do not depend on it), and its
  flan-jax import."""
  work = tmp_path_factory.mktemp("lora")
  config = hf_reference.flan_t5_small_config(shared_data, num_layers=2, num_decoder_layers=1, dropout_rate=0.0,
                                             **hf_reference.NARROW)
  hf_dir = str(work / "hf")
  hf_reference.build(config).save_pretrained(hf_dir)
  ckpt = str(work / "base")
  assert cli.main(["import-hf", "--hf", hf_dir, "--out", ckpt,
                   "--vocab", os.path.join(shared_data, "t5_vocab", "spiece.model")]) == 0
  return hf_dir, ckpt


def _train(model_dir, base_ckpt, steps, targets=("q", "v"), extra=()):
  gin_utils.parse(["runs/finetune.gin"], [
      f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'shared_nq_open'", f"TRAIN_STEPS = {steps}",
      "BATCH_SIZE = 4", "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "DROPOUT_RATE = 0.1",
      f"INITIAL_CHECKPOINT_PATH = '{base_ckpt}'", "LEARNING_RATE = 3e-2", "EVAL_TASKS = []",
      "CheckpointConfig.period = 2", "T5Config.lora_rank = 4", "T5Config.lora_alpha = 16.0",
      "T5Config.lora_dropout = 0.1", f"T5Config.lora_targets = {tuple(targets)!r}", *extra])
  train.train(log_fn=lambda line: None)
  return os.path.join(model_dir, "checkpoints")


def _batch(n=3, length=12, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 32000, (n, length))
  enc[1, 7:] = 0
  dec_in = np.concatenate([np.zeros((n, 1), np.int64), enc[:, :5]], 1)
  return enc, dec_in


def _ours(checkpoint, enc, dec_in):
  model = inference.load(checkpoint)
  return np.asarray(T5(model.config).apply({"params": model.params}, jnp.asarray(enc), jnp.asarray(dec_in),
                                           jnp.ones_like(jnp.asarray(dec_in))))


def _theirs(model, enc, dec_in):
  return hf_reference.logits(model.eval(), enc, (enc > 0).astype(np.int64), dec_in)


@pytest.mark.parametrize("targets", [("q", "v"), ALL_TARGETS], ids=["q_v", "all"])
def test_lora_trains_adapters_only_and_peft_computes_the_same(targets, base, tmp_path):
  hf_dir, base_ckpt = base
  ckpt = _train(str(tmp_path / "run"), base_ckpt, 3, targets)
  root, step, meta = checkpoints.read_meta(ckpt)
  assert meta["lora_base"] == base_ckpt and meta["model_config"]["lora_rank"] == 4
  opt_arrays = [a for a in os.listdir(os.path.join(root, str(step), checkpoints.OPT_STATE)) if a[0].isdigit()]
  assert len(opt_arrays) > 2 and all("lora_" in a for a in opt_arrays if not a.endswith(".count"))  # no base state
  model = inference.load(ckpt)
  adapters = [k for k in traverse_util.flatten_dict(model.params) if k[-1] in ("lora_a", "lora_b")]
  per_layer = {"q": 4, "k": 4, "v": 4, "o": 4, "wi_0": 3, "wi_1": 3, "wo": 3}  # 2 enc + 1 dec (self + cross)
  assert len(adapters) == 2 * sum(per_layer[t] for t in targets)
  from flan_jax.partitioning import restore_target
  from flan_jax import lora
  stored, _, _, _ = checkpoints.restore(ckpt, lora.split(restore_target(model.config))[0])
  assert all(k[-1] in ("lora_a", "lora_b") for k in traverse_util.flatten_dict(stored))
  assert any(np.abs(np.asarray(b)).max() > 0 for k, b in traverse_util.flatten_dict(stored).items()
             if k[-1] == "lora_b")  # trained: B moved off zero
  # The checkpoint holds adapters only (above), and peft below applies them to the original HF base: equal logits
  # mean the base weights are the original ones.

  adapter_dir = str(tmp_path / "adapter")
  assert cli.main(["export-hf", "--checkpoint", ckpt, "--out", adapter_dir, "--adapter", "--base", hf_dir]) == 0
  with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
    written = json.load(f)
  assert written["peft_type"] == "LORA" and written["task_type"] == "SEQ_2_SEQ_LM" and written["r"] == 4
  assert sorted(written["target_modules"]) == sorted(targets) and written["lora_alpha"] == 16.0
  peft_model = peft.PeftModel.from_pretrained(transformers.T5ForConditionalGeneration.from_pretrained(hf_dir),
                                              adapter_dir)
  enc, dec_in = _batch()
  ours, theirs = _ours(ckpt, enc, dec_in), _theirs(peft_model, enc, dec_in)
  base_logits = _theirs(transformers.T5ForConditionalGeneration.from_pretrained(hf_dir), enc, dec_in)
  assert np.abs(ours - base_logits).max() > 1e-3  # the adapters change the model...
  assert np.abs(ours - theirs).max() <= 1e-4      # ...exactly as peft applies them

  merged_dir = str(tmp_path / "merged")
  assert cli.main(["export-hf", "--checkpoint", ckpt, "--out", merged_dir, "--merge"]) == 0
  merged = transformers.T5ForConditionalGeneration.from_pretrained(merged_dir)
  reference = peft_model.merge_and_unload().state_dict()
  for name, value in merged.state_dict().items():
    assert np.allclose(value.numpy(), reference[name].numpy(), atol=1e-6), name
  assert np.abs(_theirs(merged, enc, dec_in) - ours).max() <= 1e-4


def test_fresh_adapters_equal_the_base_and_resume_is_exact(base, tmp_path):
  hf_dir, base_ckpt = base
  straight = _train(str(tmp_path / "straight"), base_ckpt, 4)
  _train(str(tmp_path / "resumed"), base_ckpt, 2)
  resumed = _train(str(tmp_path / "resumed"), base_ckpt, 4)
  a, b = inference.load(straight).params, inference.load(resumed).params
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  import flax.linen as nn
  from flan_jax import lora
  from flan_jax.models.t5 import init_variables
  config = inference.load(straight).config
  fresh, _ = lora.split(nn.unbox(init_variables(config, jax.random.key(1)))["params"])
  base_model = inference.load(base_ckpt)
  enc, dec_in = _batch()
  step0 = T5(config).apply({"params": lora.combine(base_model.params, fresh)}, enc, dec_in, np.ones_like(dec_in))
  plain = T5(base_model.config).apply({"params": base_model.params}, enc, dec_in, np.ones_like(dec_in))
  assert np.array_equal(np.asarray(step0), np.asarray(plain))  # B starts at zero, as peft's


def test_a_peft_written_adapter_imports_and_computes_the_same(base, tmp_path):
  hf_dir, base_ckpt = base
  torch.manual_seed(0)
  config = peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, target_modules=["q", "v", "wo"],
                           init_lora_weights=False, use_rslora=True)
  model = peft.get_peft_model(transformers.T5ForConditionalGeneration.from_pretrained(hf_dir), config)
  adapter_dir = str(tmp_path / "peft")
  model.save_pretrained(adapter_dir)
  out = str(tmp_path / "imported")
  assert cli.main(["import-peft", "--adapter", adapter_dir, "--base", base_ckpt, "--out", out]) == 0
  enc, dec_in = _batch(seed=1)
  theirs, ours = _theirs(model, enc, dec_in), _ours(out, enc, dec_in)
  base_logits = _theirs(transformers.T5ForConditionalGeneration.from_pretrained(hf_dir), enc, dec_in)
  assert np.abs(theirs - base_logits).max() > 1e-3 and np.abs(ours - theirs).max() <= 1e-4


def test_bad_lora_settings_are_one_line(base, tmp_path, capsys):
  hf_dir, base_ckpt = base
  common = ["train", "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            "--gin.MIXTURE_OR_TASK_NAME='shared_nq_open'", "--gin.TRAIN_STEPS=1", "--gin.EVAL_TASKS=[]"]
  for flags, message in [
      ([f"--gin.INITIAL_CHECKPOINT_PATH='{base_ckpt}'", "--gin.T5Config.lora_rank=0"], "lora_rank must be >= 1"),
      ([f"--gin.INITIAL_CHECKPOINT_PATH='{base_ckpt}'", "--gin.T5Config.lora_rank=4",
        "--gin.T5Config.lora_targets=('q', 'query')"], "unknown LoRA target 'query'"),
      (["--gin_file=models/tiny.gin", "--gin.T5Config.lora_rank=4"], "set INITIAL_CHECKPOINT_PATH")]:
    assert cli.main(common + flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "run").exists()

  torch.manual_seed(0)
  small = transformers.T5Config(vocab_size=32128, d_model=64, d_ff=128, num_heads=2, d_kv=32, num_layers=2,
                                num_decoder_layers=1, feed_forward_proj="gated-gelu")
  model = peft.get_peft_model(transformers.T5ForConditionalGeneration(small),
                              peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules=["q", "v"]))
  model.save_pretrained(str(tmp_path / "other"))
  assert cli.main(["import-peft", "--adapter", str(tmp_path / "other"), "--base", base_ckpt,
                   "--out", str(tmp_path / "x")]) == 2
  assert "does not fit the base" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_the_partial_sum_input_gradient_equals_autodiff():
  """On a 'model'-split mesh the adapters take their own backward pass (models/t5.py): the same gradients."""
  from flan_jax.models.t5 import _lora_delta_partial_input_grad
  h, a, b, w = (jax.random.normal(k, s) for k, s in zip(jax.random.split(jax.random.key(0), 4),
                                                         [(32, 16), (16, 4), (4, 24), (32, 24)]))
  ours = jax.grad(lambda *x: jnp.sum(jnp.sin(_lora_delta_partial_input_grad(*x, 0.5)) * w), (0, 1, 2))(h, a, b)
  autodiff = jax.grad(lambda h, a, b: jnp.sum(jnp.sin(jnp.dot(jnp.dot(h, a), b) * 0.5) * w), (0, 1, 2))(h, a, b)
  for x, y in zip(ours, autodiff):
    assert np.max(np.abs(np.asarray(x) - np.asarray(y))) <= 1e-5 * np.max(np.abs(np.asarray(y)))

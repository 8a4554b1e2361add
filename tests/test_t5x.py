"""T5X checkpoints in and out, against checkpoints and outputs written by t5x itself (../shared/data/t5x)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util
from safetensors.numpy import load_file

import hf_reference
from flan_jax import checkpoints, cli, decoding, gin_utils, optim, t5x, train, trainer
from flan_jax.models import T5

T5X_SETTINGS = ["--gin.adafactor.min_dim_size_to_factor=32"]  # the fixture run's Adafactor (config.json)


def _t5x_adafactor():
  gin_utils.parse([], ["adafactor.min_dim_size_to_factor = 32"], finalize=False)


@pytest.fixture(scope="module")
def fixtures(shared_data):
  return os.path.join(shared_data, "t5x")


def _import(tmp_path, source, *flags):
  out = str(tmp_path / "imported")
  assert cli.main(["import-t5x", "--checkpoint", source, "--out", out, *flags]) == 0
  return out


def _load(path, with_opt=False):
  _, step, meta = checkpoints.read_meta(path)
  config = checkpoints.model_config(meta)
  from flan_jax.partitioning import restore_target
  abstract = restore_target(config)
  opt = None
  if with_opt:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    opt = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                       jax.eval_shape(optim.adafactor().init, abstract))
  params, opt_state, _, step = checkpoints.restore(path, abstract, opt)
  return config, params, opt_state, step


@pytest.mark.parametrize("model,checkpoint,suffix", [
    ("tiny_t5_1_1", "checkpoint_3", ""), ("tiny_t5_1_1", "checkpoint_4", "_bf16_ckpt"),
    ("tiny_scalable_t5", "checkpoint_1", "")])
def test_imported_checkpoint_computes_what_t5x_computed(model, checkpoint, suffix, fixtures, tmp_path):
  """Logits within 1e-5, score log-likelihoods and greedy tokens as t5x computed them on the same batch."""
  ref = np.load(os.path.join(fixtures, model, "reference.npz"))
  config, params, _, _ = _load(_import(tmp_path, os.path.join(fixtures, model, "model", checkpoint)))
  assert config.relpos_per_layer == (model == "tiny_scalable_t5")
  enc, dec_in, targets = (jnp.asarray(ref[k]) for k in ("encoder_input_tokens", "decoder_input_tokens",
                                                         "decoder_target_tokens"))
  logits = np.asarray(T5(config).apply({"params": params}, enc, dec_in, targets))
  assert np.abs(logits - ref["logits" + suffix]).max() <= 1e-5
  loglik = np.asarray(decoding.score(params, enc, dec_in, targets, config=config))
  assert np.allclose(loglik, ref["loglik" + suffix], atol=1e-4, rtol=1e-6)
  if "greedy_tokens" in ref and not suffix:
    tokens, scores = decoding.sample(params, enc, jax.random.key(0), config=config, max_length=8)
    assert np.array_equal(np.asarray(tokens), ref["greedy_tokens"])
    assert np.allclose(np.asarray(scores), ref["greedy_scores"], atol=1e-4)


def test_one_flan_jax_step_continues_the_t5x_run_exactly(fixtures, tmp_path):
  """checkpoint_3 with its Adafactor state, one step on t5x's batch with t5x's settings (lr 0.01, z-loss 1e-4,
  summed loss = LOSS_NORMALIZING_FACTOR 1): t5x's step-4 parameters within 1e-5 and t5x's loss."""
  imported = _import(tmp_path, os.path.join(fixtures, "tiny_t5_1_1", "model", "checkpoint_3"),
                     "--with_optimizer_state", *T5X_SETTINGS)
  _t5x_adafactor()
  config, params, opt_state, step = _load(imported, with_opt=True)
  assert step == 3 and int(opt_state[0].count) == 3
  ref = np.load(os.path.join(fixtures, "tiny_t5_1_1", "reference.npz"))
  expected = np.load(os.path.join(fixtures, "tiny_t5_1_1", "continued_step.npz"))
  batch = {k[len("train_"):]: jnp.asarray(ref[k]) for k in ref if k.startswith("train_")}
  tx = optim.adafactor(learning_rate=float(expected["learning_rate"]), min_dim_size_to_factor=32)
  state = trainer.TrainState(step=jnp.asarray(step), params=params, opt_state=opt_state)
  new, metrics = jax.jit(trainer.make_train_step(config, tx, 1e-4, 1.0))(state, batch, jax.random.key(0))
  assert abs(float(metrics["loss"] * metrics["tokens"]) - float(expected["loss"])) <= 1e-5 * float(expected["loss"])
  ours = traverse_util.flatten_dict(new.params, sep="/")
  before = traverse_util.flatten_dict(params, sep="/")
  assert set(ours) == {k for k in expected.files if "/" in k and not k.startswith("opt_state/")}
  for name, value in ours.items():
    assert np.abs(np.asarray(value) - expected[name]).max() <= 1e-5 * np.abs(expected[name]).max(), name
    assert not np.array_equal(np.asarray(value), np.asarray(before[name])), name  # the step moved it
  slots = {"v_row": new.opt_state[0].v_row, "v_col": new.opt_state[0].v_col, "v": new.opt_state[0].v}
  for key in (k for k in expected.files if k.startswith("opt_state/")):
    name, slot = key[len("opt_state/"):].rsplit("/", 1)
    got = np.asarray(traverse_util.flatten_dict(slots[slot], sep="/")[name])
    assert got.shape == expected[key].shape and np.allclose(got, expected[key], rtol=1e-5, atol=1e-30), key


def _tree(ckpt_dir):
  """{path: ('inline', dtype, shape) or ('tensorstore', dtype, shape, chunks)} of a T5X msgpack file."""
  with open(os.path.join(ckpt_dir, "checkpoint"), "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  out = {}
  for path, leaf in t5x._flat(tree).items():
    if t5x._is_spec(leaf):
      out[path] = ("tensorstore", leaf["dtype"], tuple(leaf["metadata"]["shape"]), tuple(leaf["metadata"]["chunks"]),
                   leaf["kvstore"]["path"])
    else:
      out[path] = ("inline", np.asarray(leaf).dtype.name, np.shape(leaf))
  return out


def test_export_has_t5x_layout_and_import_of_export_is_bitwise(fixtures, tmp_path):
  source = os.path.join(fixtures, "tiny_t5_1_1", "model", "checkpoint_3")
  imported = _import(tmp_path, source, "--with_optimizer_state", *T5X_SETTINGS)
  assert cli.main(["export-t5x", "--checkpoint", imported, "--out", str(tmp_path / "t5x"), "--with_optimizer_state",
                   *T5X_SETTINGS]) == 0
  exported = str(tmp_path / "t5x" / "checkpoint_3")
  assert _tree(exported) == _tree(source)  # keys, inline vs tensorstore, dtypes, shapes, chunks, file names
  for name in ("target.encoder.layers_0.attention.query.kernel", "state.param_states.encoder.relpos_bias.rel_embedding.v"):
    with open(os.path.join(exported, name, ".zarray")) as a, open(os.path.join(source, name, ".zarray")) as b:
      assert json.load(a) == json.load(b)
  again = str(tmp_path / "again")
  assert cli.main(["import-t5x", "--checkpoint", exported, "--out", again, "--with_optimizer_state",
                   *T5X_SETTINGS]) == 0
  _t5x_adafactor()
  first, second = _load(imported, with_opt=True), _load(again, with_opt=True)
  for a, b in zip(jax.tree.leaves(first[1:]), jax.tree.leaves(second[1:])):
    assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_hf_to_t5x_and_back_keeps_every_weight_bitwise_and_trains_from_t5x(shared_data, tmp_path):
  """HF -> flan-jax -> T5X -> flan-jax -> HF, bitwise; and INITIAL_CHECKPOINT_PATH at the T5X checkpoint
  trains exactly as from the flan-jax checkpoint it was exported from."""
  # Flan-T5-small's config, narrow: a bitwise round trip does not depend on the widths.
  config = hf_reference.flan_t5_small_config(shared_data, num_layers=2, num_decoder_layers=1, dropout_rate=0.0,
                                             **hf_reference.NARROW)
  hf_dir, vocab = str(tmp_path / "hf"), os.path.join(shared_data, "t5_vocab", "spiece.model")
  hf_reference.build(config).save_pretrained(hf_dir)
  ours = str(tmp_path / "ours")
  assert cli.main(["import-hf", "--hf", hf_dir, "--out", ours, "--vocab", vocab]) == 0
  assert cli.main(["export-t5x", "--checkpoint", ours, "--out", str(tmp_path / "t5x")]) == 0
  exported = str(tmp_path / "t5x" / "checkpoint_0")
  back = str(tmp_path / "back")
  assert cli.main(["import-t5x", "--checkpoint", exported, "--out", back, "--vocab", vocab]) == 0
  assert cli.main(["export-hf", "--checkpoint", back, "--out", str(tmp_path / "hf2")]) == 0
  original, final = load_file(os.path.join(hf_dir, "model.safetensors")), \
      load_file(str(tmp_path / "hf2" / "model.safetensors"))
  assert set(original) - set(final) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
  assert all(np.array_equal(final[k], original[k]) for k in final)

  trained = []
  for name, initial in (("from_ours", ours), ("from_t5x", exported)):
    model_dir = str(tmp_path / name)
    gin_utils.parse(["runs/finetune.gin"], [
        f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'shared_nq_open'", "TRAIN_STEPS = 2",
        "BATCH_SIZE = 4", "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "DROPOUT_RATE = 0.0",
        f"INITIAL_CHECKPOINT_PATH = '{initial}'", "LEARNING_RATE = 1e-2", "EVAL_TASKS = []"])
    train.train(log_fn=lambda line: None)
    trained.append(_load(os.path.join(model_dir, "checkpoints"))[1])
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained[0]), jax.tree.leaves(trained[1])))
  start = _load(ours)[1]
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained[0]), jax.tree.leaves(start)))


def test_bad_t5x_input_is_one_line_and_writes_nothing(fixtures, tmp_path, capsys):
  out = tmp_path / "out"
  run = lambda source, *flags: cli.main(["import-t5x", "--checkpoint", str(source), "--out", str(out), *flags])
  (tmp_path / "empty").mkdir()
  assert run(tmp_path / "empty") == 2
  assert "is not a T5X checkpoint" in capsys.readouterr().err
  broken = tmp_path / "broken"
  shutil.copytree(os.path.join(fixtures, "tiny_t5_1_1", "model", "checkpoint_3"), broken)
  chunk = broken / "target.encoder.layers_0.mlp.wo.kernel" / "0.0"
  chunk.chmod(0o644)
  chunk.write_bytes(chunk.read_bytes()[:100])  # truncated
  assert run(broken) == 2
  err = capsys.readouterr().err
  assert "cannot read target/encoder/layers_0/mlp/wo/kernel" in err and len(err.strip().splitlines()) == 1
  chunk.unlink()  # missing: must not read as zeros
  assert run(broken) == 2
  assert "cannot read target/encoder/layers_0/mlp/wo/kernel" in capsys.readouterr().err
  source = os.path.join(fixtures, "tiny_t5_1_1", "model", "checkpoint_3")
  assert run(source, "--gin.T5Config.d_model=512") == 2
  assert "has T5Config.d_model=64, gin binds 512" in capsys.readouterr().err
  assert run(source, "--gin.T5Config.mlp_activations=('relu',)") == 2
  assert "gated MLP" in capsys.readouterr().err
  assert run(source, "--with_optimizer_state") == 2  # flan-jax's default factors only dims >= 128
  assert "min_dim_size_to_factor" in capsys.readouterr().err
  assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
  scalable = os.path.join(fixtures, "tiny_scalable_t5", "model", "checkpoint_1")
  assert run(scalable) == 0
  assert cli.main(["export-hf", "--checkpoint", str(out), "--out", str(tmp_path / "hf")]) == 2
  assert "relative-position bias per layer" in capsys.readouterr().err

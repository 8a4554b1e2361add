"""MODEL_DIR, checkpoints, logs and imports on gs://, against a GCS server on 127.0.0.1 (the `gcs` fixture) with
the real clients: orbax/tensorstore for arrays, etils.epath over gcsfs for everything else."""

import json
import os

import numpy as np
import safetensors.numpy
import seqio
from etils import epath

from flan_jax import checkpoints, cli, logs
from flan_jax.data import collection, collection_files, mixing
from flan_jax.data.collection import register_flan_collection
from flan_jax.vocab import byte_vocabulary
from test_flan_collection import _read, sample  # noqa: F401 (a fixture)
from test_train import assert_bitwise_equal, run_in_process, train_losses

BUCKET = "gs://flan-jax-test"


def _steps(ckpt_dir):
  """Committed steps: on GCS a step folder is complete once orbax's commit marker is in it."""
  return sorted(int(p.name) for p in epath.Path(ckpt_dir).iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists())


def _copy_tree(source: epath.Path, destination: str) -> None:
  os.makedirs(destination, exist_ok=True)
  for path in source.iterdir():
    if path.is_dir():
      _copy_tree(path, os.path.join(destination, path.name))
    else:
      with open(os.path.join(destination, path.name), "wb") as f:
        f.write(path.read_bytes())


def test_train_on_gcs_resumes_exactly_keeps_k_and_writes_its_logs(gcs, tmp_path):
  remote = f"{BUCKET}/run"
  common = ["--gin.CheckpointConfig.period=2", "--gin.CheckpointConfig.keep=2", "--gin.DROPOUT_RATE=0.1",
            "--gin.EVAL_TASKS=['demo_held_in']", "--gin.EVAL_PERIOD=6", "--gin.EvalConfig.max_examples=4",
            "--gin.EvalConfig.best_metric='eval/demo_held_in/accuracy'"]
  run_in_process(remote, 6, *common)
  # A local copy of the uninterrupted run: the resume's reference, and what infer/eval/export compare gs:// with.
  local = str(tmp_path / "local")
  _copy_tree(epath.Path(remote, "checkpoints"), os.path.join(local, "checkpoints"))
  straight_losses = train_losses(remote)
  for step in ("checkpoints/6", "best/6"):  # as a VM preempted after step 4 left it; the rerun goes on from gs://
    epath.Path(remote, step).rmtree()
  lines = run_in_process(remote, 6, *common)
  assert f"resumed from {remote}/checkpoints/4" in lines
  assert "restored the input position at step 4" in lines
  assert _steps(f"{remote}/checkpoints") == [4, 6]  # keep 2
  assert sorted(p.name for p in epath.Path(remote, "checkpoints").iterdir() if p.name[0].isdigit()) == ["4", "6"]
  assert_bitwise_equal(local, remote, 6)
  assert train_losses(remote) == straight_losses and sorted(straight_losses) == [1, 2, 3, 4, 5, 6]
  assert len(_steps(f"{remote}/best")) == 1
  assert epath.Path(remote, "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
  assert any(p.name.startswith("events.out.tfevents") for p in epath.Path(remote).iterdir())

  # infer, eval and export-hf read the gs:// checkpoint as they read the same arrays in a local folder;
  # INITIAL_CHECKPOINT_PATH may be on gs:// too.
  (tmp_path / "in.jsonl").write_text(json.dumps({"inputs": "sort: 3 1 2"}) + "\n")
  outputs = {}
  for name, run in (("local", local), ("gcs", remote)):
    out = tmp_path / name
    assert cli.main(["infer", "--checkpoint", f"{run}/checkpoints", "--input", str(tmp_path / "in.jsonl"),
                     "--output", str(out / "infer.jsonl"), "--max_decode_length", "8"]) == 0
    assert cli.main(["eval", "--checkpoint", f"{run}/checkpoints", "--tasks", "demo_held_in", "--max_examples", "4",
                     "--max_decode_length", "8", "--output", str(out / "eval.json")]) == 0
    assert cli.main(["export-hf", "--checkpoint", f"{run}/checkpoints", "--out", str(out / "hf")]) == 0
    outputs[name] = (json.loads((out / "infer.jsonl").read_text())["prediction"],
                     json.loads((out / "eval.json").read_text()),
                     safetensors.numpy.load_file(str(out / "hf" / "model.safetensors")))
  (pred, evaluated, weights), (gcs_pred, gcs_evaluated, gcs_weights) = outputs["local"], outputs["gcs"]
  assert gcs_pred == pred and gcs_evaluated == evaluated and gcs_weights.keys() == weights.keys()
  assert all(np.array_equal(gcs_weights[k], weights[k]) for k in weights)
  lines = run_in_process(str(tmp_path / "from_gcs"), 0, f"--gin.INITIAL_CHECKPOINT_PATH='{remote}/checkpoints/6'")
  assert f"initialised from {remote}/checkpoints/6" in lines  # 0 steps: the restore is what is tested


def test_import_t5x_and_missing_objects_on_gcs(gcs, shared_data, tmp_path, capsys):
  source = os.path.join(shared_data, "t5x", "tiny_t5_1_1", "model", "checkpoint_3")
  remote = epath.Path(f"{BUCKET}/t5x/checkpoint_3")
  for folder, _, files in os.walk(source):
    for name in files:
      with open(os.path.join(folder, name), "rb") as f:
        (remote / os.path.relpath(os.path.join(folder, name), source)).write_bytes(f.read())
  out = str(tmp_path / "imported")
  assert cli.main(["import-t5x", "--checkpoint", str(remote), "--out", out]) == 0
  from flan_jax.models import T5
  from flan_jax.partitioning import restore_target
  config = checkpoints.model_config(checkpoints.read_meta(out)[2])
  params = checkpoints.restore(out, restore_target(config))[0]
  ref = np.load(os.path.join(shared_data, "t5x", "tiny_t5_1_1", "reference.npz"))
  logits = T5(config).apply({"params": params}, ref["encoder_input_tokens"], ref["decoder_input_tokens"],
                            ref["decoder_target_tokens"])
  assert np.abs(np.asarray(logits) - ref["logits"]).max() <= 1e-5

  for args, message in [
      (["infer", "--checkpoint", "gs://no-such-bucket/run/checkpoints", "--input", "x", "--output", "y"],
       "checkpoint not found"),
      (["infer", "--checkpoint", f"{BUCKET}/nothing-here", "--input", "x", "--output", "y"], "checkpoint not found"),
      (["import-t5x", "--checkpoint", f"{BUCKET}/nothing-here", "--out", str(tmp_path / "x")],
       "is not a T5X checkpoint")]:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_json_log_appends_instead_of_rewriting(gcs, tmp_path, monkeypatch):
  """Bytes written for 1,000 log lines (a 10,000-step run logging every 10 steps): each line once locally;
  on gs:// only the last part of at most 100 lines is rewritten."""
  written = {"bytes": 0}
  write_text = epath.Path.write_text

  def counting_write(self, text, *a, **k):
    written["bytes"] += len(text)
    return write_text(self, text, *a, **k)

  monkeypatch.setattr(epath.Path, "write_text", counting_write)
  for model_dir in (str(tmp_path / "run"), f"{BUCKET}/logs"):
    written["bytes"] = 0
    writer = logs.MetricWriter(model_dir)
    line = len(json.dumps({"step": 10000, "train/loss": 1.2345}) + "\n")
    for step in range(10, 10001, 10):
      writer.write(step, {"train/loss": 1.2345})
    writer.close()
    rows = logs.read_log(model_dir)
    assert [r["step"] for r in rows] == list(range(10, 10001, 10))
    if "://" not in model_dir:  # appended: nothing rewritten, each line written once
      assert written["bytes"] == 0 and os.path.getsize(os.path.join(model_dir, logs.LOG_FILE)) <= 1000 * line
    else:  # rewriting the whole log each time would be about 500 x 1000 lines
      assert written["bytes"] <= 51 * 1000 * line
      assert len(logs._log_parts(epath.Path(model_dir))) == 10


def test_flan_collection_from_gcs_registers_and_streams_as_the_local_copy(gcs, sample, monkeypatch):
  """The same sample (JSON lines, gzip and Parquet) on gs://: the same tasks, rates, rows and host shards."""
  remote = epath.Path(f"{BUCKET}/flan_collection")
  for path in sample.rglob("*"):
    if path.is_file():
      (remote / path.relative_to(sample)).write_bytes(path.read_bytes())
  local_mixtures = register_flan_collection(str(sample), byte_vocabulary())
  local = {name: (mixing.any_rates(name), sorted(_read(name))) for name in local_mixtures}
  monkeypatch.setattr(collection_files, "_count", _fail_if_local(collection_files._count))
  assert register_flan_collection(str(remote), byte_vocabulary()) == local_mixtures
  for name in local_mixtures:
    assert (mixing.any_rates(name), sorted(_read(name))) == local[name], name
  shards = [_read("flan2022_cot_cot_gsm8k", seqio.ShardInfo(i, 2)) for i in range(2)]
  assert sorted(map(len, shards)) == [3, 5] and sorted(shards[0] + shards[1]) == sorted(_read("flan2022_cot_cot_gsm8k"))


def _fail_if_local(count):
  """Counting goes to gs://, not to a cached local path."""
  def checked(path):
    assert path.startswith("gs://"), path
    return count(path)
  return checked


def test_the_collection_stream_reads_gcs_as_local_and_rides_out_429_and_503(gcs, tmp_path, monkeypatch):
  """A synthetic collection (Parquet and gzip JSON lines) on gs://: the stream's batches equal the local copy's,
  and with downloads failing transiently (HTTP 503, 429) they are retried and the batches are the same."""
  from gcs_server import inject_faults
  from test_collection_stream import _generator
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  for fmt, status in (("parquet", 503), ("jsonl.gz", 429)):
    local = tmp_path / fmt
    _generator().generate(str(local), 0.0002, fmt, log=lambda _: None, inputs_chars=(20, 60), targets_chars=(4, 8))
    remote = epath.Path(f"{BUCKET}/synthetic_{fmt.replace('.', '_')}")
    for path in local.rglob("*"):
      if path.is_file():
        (remote / path.relative_to(local)).write_bytes(path.read_bytes())
    register_flan_collection(str(local), byte_vocabulary(), prefix="here")
    register_flan_collection(str(remote), byte_vocabulary(), prefix="there")

    def batches(prefix):
      it = iter(collection.stream(prefix, {"inputs": 128, "targets": 16}, 4))
      out = [next(it) for _ in range(30)]
      it.close()
      return out

    want = batches("here")
    inject_faults(gcs["STORAGE_EMULATOR_HOST"], status, 3, match="part-")
    got = batches("there")
    assert inject_faults(gcs["STORAGE_EMULATOR_HOST"]) == 0  # every fault was met
    assert all(np.array_equal(g[k], w[k]) for g, w in zip(got, want) for k in w), (fmt, status)

"""The Flan 2022 collection as one stream, on a synthetic collection of the published shape (1,897 tasks in
fourteen template-type folders, scripts/synthetic_flan_collection.py) with short rows: the paper's mixture over
100k drawn examples, packed features as seqio packs them, bitwise resume from a small saved position, hosts that
never share a row, memory and threads that do not grow with the number of tasks, and damaged files named."""

import collections
import copy
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax import checkpoints
from flan_jax.data import collection, collection_stream, mixing, pipeline
from flan_jax.errors import UserError
from flan_jax.vocab import byte_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 256, "targets": 32}


def _generator():
  spec = importlib.util.spec_from_file_location("synthetic", os.path.join(REPO, "scripts",
                                                                         "synthetic_flan_collection.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SCALE = 0.002  # 35k rows


@pytest.fixture(autouse=True)
def small_windows(monkeypatch):
  """Windows of a few thousand rows, so that a short run crosses several."""
  monkeypatch.setattr(collection_stream, "WINDOW_ROWS", 4096)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  with pytest.MonkeyPatch.context() as env:
    env.setenv("XDG_CACHE_HOME", str(root / "cache"))
    written = _generator().generate(str(root / "flan"), SCALE, "parquet", log=lambda _: None,
                                    inputs_chars=(20, 80), targets_chars=(4, 12))
    collection.register_flan_collection(str(root / "flan"), byte_vocabulary(), prefix="synth")
    yield root / "flan", written


def test_the_generator_is_deterministic_and_of_the_published_shape(tmp_path):
  generator = _generator()
  for out in ("a", "b"):
    generator.generate(str(tmp_path / out), 0.0002, "jsonl.gz", log=lambda _: None, inputs_chars=(20, 40),
                       targets_chars=(4, 8))
  folders = sorted(os.listdir(tmp_path / "a"))
  assert len(folders) == 14 and "niv2_fsopt_data" in folders and "t0_zsnoopt_data" in folders
  for folder in folders:
    for name in os.listdir(tmp_path / "a" / folder):
      a, b = ((tmp_path / out / folder / name).read_bytes() for out in "ab")
      assert gzip.decompress(a) == gzip.decompress(b)
  counts = {s: len(generator.task_names(s)) for s in generator.SUBMIXES}
  assert counts == {"flan": 120, "t0": 193, "niv2": 1554, "cot": 18, "dialog": 12}


def _draw(stream, n):
  """The (task, template type) of the first n kept examples, as the stream keeps them, window after window."""
  return [(e[2], e[3]) for _, e in zip(range(n), stream.examples())]


def test_100k_examples_follow_the_papers_mixture(synthetic):
  """Submix shares within 1 point of 0.4 / 0.32 / 0.2 / 0.05 / 0.03, and every task's count within a chi-square
  bound of its rate: the rates FLAN gives (each template type capped per task, template types equally,
  input-inversion at 0.3), which the seqio mixture reports too."""
  stream = collection.stream("synth", LENGTHS, 8)
  drawn = _draw(stream, 100_000)
  submix_of = {}
  for task in seqio.get_mixture_or_task("synth").tasks:
    submix_of[task.source.task] = task.name.split("_")[1]
  shares = collections.Counter(submix_of[t] for t, _ in drawn)
  for submix, weight in collection.WEIGHTS.items():
    assert abs(shares[submix] / len(drawn) - weight) < 0.01, (submix, shares[submix] / len(drawn))
  rates = mixing.any_rates("synth")
  total = sum(rates.values())
  expected = {seqio.get_mixture_or_task(name).source.task: len(drawn) * r / total for name, r in rates.items()}
  counts = collections.Counter(t for t, _ in drawn)
  big = [t for t, e in expected.items() if e >= 5]
  small = [t for t in expected if t not in big]
  observed = [counts[t] for t in big] + [sum(counts[t] for t in small)]
  wanted = [expected[t] for t in big] + [sum(expected[t] for t in small)]
  chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, wanted))
  dof = len(observed) - 1
  assert dof > 200 and chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)
  # the input-inversion tasks of CoT: 0.3 / 1.3 of its share
  cot = [t for t, _ in drawn if submix_of[t] == "cot"]
  assert abs(sum(t.endswith("_ii") for t in cot) / len(cot) - 0.3 / 1.3) < 0.03


def test_rates_mix_template_types_as_flan_does(synthetic):
  """Within a submix, each template type's tasks by min(rows, cap), the template types equally."""
  units = collection.UNIT_RATES["synth_t0"]
  by_type = collections.defaultdict(float)
  for (_, template_type), rate in units.items():
    by_type[template_type] += rate
  assert sorted(by_type) == ["fs_noopt", "fs_opt", "zs_noopt", "zs_opt"]
  assert all(abs(r - 0.25) < 1e-9 for r in by_type.values())
  assert abs(sum(collection.UNIT_RATES["synth"].values()) - 1.0) < 1e-9


def test_tokens_are_seqios_with_the_t5_vocabulary(synthetic, t5_vocab):
  stream = copy.copy(collection.stream("synth_cot", LENGTHS, 2))
  stream.vocabulary = t5_vocab
  texts = ["Premise: a man sleeps.\n\nOPTIONS:\n- yes\n- no", "Ünïcödé  spaces\tand tabs", "", "x " * 400]
  assert stream.tokenize(texts, 64) == [list(t5_vocab.encode(t))[:63] + [1] for t in texts]  # cut, then EOS


def test_packed_rows_are_what_seqio_packs(synthetic):
  stream = collection.stream("synth_cot", LENGTHS, 2)
  examples = [("first question here", "yes", "t", "zs_opt"), ("a second one", "no way", "t", "zs_opt")]
  ours = stream.pack(examples)
  assert len(ours) == 1
  vocab = byte_vocabulary()
  ds = tf.data.Dataset.from_generator(
      lambda: ({"inputs": vocab.encode(i) + [1], "targets": vocab.encode(t) + [1]} for i, t, _, _ in examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
  theirs = next(pipeline.iterate(seqio.EncDecFeatureConverter(pack=True)(ds, LENGTHS)))
  for name in collection_stream.FEATURES:
    np.testing.assert_array_equal(ours[0][name], theirs[name], err_msg=name)


def test_resume_is_bitwise_from_a_small_state(synthetic, tmp_path):
  """From a position saved anywhere (inside a window, at its end, in a later epoch), the next 1,000 batches are
  the uninterrupted stream's."""
  stream = collection.stream("synth", LENGTHS, 2, seed=3)
  it = iter(stream)
  states, batches = [], []
  for _ in range(1300):
    states.append(it.get_state())
    batches.append(next(it))
  it.close()
  assert states[-1]["epoch"] > 0 and len({s["window"] for s in states}) > 3  # the run crosses windows and epochs
  for at in (1, 37, 300):
    resumed = iter(stream)
    resumed.set_state(json.loads(json.dumps(states[at])))
    for want in batches[at:at + 1000]:
      got = next(resumed)
      assert all(np.array_equal(got[k], want[k]) for k in want)
    resumed.close()
  # through a checkpoint: a few bytes of JSON per process
  mngr = checkpoints.manager(str(tmp_path / "ckpt"))
  it = iter(stream)
  for _ in range(37):
    next(it)
  checkpoints.save(mngr, 37, {"w": np.zeros(2)}, {"step": 37}, data_iterator=it)
  state_file = next((tmp_path / "ckpt" / "37" / checkpoints.DATA).glob("*.json"))
  assert state_file.stat().st_size < 1024
  again = iter(stream)
  checkpoints.restore_data_iterator(str(tmp_path / "ckpt"), again)
  got = next(again)
  assert all(np.array_equal(got[k], batches[37][k]) for k in got)
  it.close()
  again.close()


def test_hosts_read_disjoint_rows_that_make_up_the_whole(synthetic):
  def kept(index, num_shards):
    stream = collection.stream("synth_flan", LENGTHS, 8, shard_info=seqio.ShardInfo(index, num_shards),
                               num_epochs=1)
    return [e[:2] for e in stream.examples()]
  whole = kept(0, 1)
  parts = [kept(i, 2) for i in range(2)]
  assert parts[0] and parts[1]
  assert collections.Counter(parts[0]) + collections.Counter(parts[1]) == collections.Counter(whole)


MEMORY = """
import os, resource, sys
os.environ["XDG_CACHE_HOME"] = sys.argv[2]
from flan_jax.data import collection, mixing
from flan_jax.vocab import byte_vocabulary
collection.register_flan_collection(sys.argv[1], byte_vocabulary(), prefix="m")
import seqio
names = sorted(t.name for t in seqio.get_mixture_or_task("m").tasks)
mixing.add_mixture("hundred", [(n, None) for n in names[:100]])
for mixture in ("hundred", "m"):  # the peak after 100 tasks, then after all of them
  it = iter(collection.stream(mixture, {"inputs": 256, "targets": 32}, 16))
  threads = 0
  for _ in range(200):
    next(it)
    threads = max(threads, int(open("/proc/self/status").read().split("Threads:")[1].split()[0]))
  it.close()
  print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, threads)
"""


def test_memory_and_threads_do_not_grow_with_the_task_count(synthetic):
  """Peak RSS after streaming a 100-task mixture, then the 1,897-task one, in one process."""
  out = subprocess.run([sys.executable, "-c", MEMORY, str(synthetic[0]), os.environ["XDG_CACHE_HOME"]],
                       capture_output=True, text=True, check=True).stdout.split()
  rss = {"100 tasks": int(out[0]), "1,897 tasks": int(out[2])}
  threads = {"100 tasks": int(out[1]), "1,897 tasks": int(out[3])}
  assert rss["1,897 tasks"] < 1.1 * rss["100 tasks"], rss
  assert max(threads.values()) <= 64, threads


def test_a_damaged_file_is_one_line_naming_it(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  _generator().generate(str(tmp_path / "gz"), 0.0001, "jsonl.gz", log=lambda _: None, inputs_chars=(20, 40),
                        targets_chars=(4, 8))
  victim = tmp_path / "gz" / "cot_zsopt_data" / "part-00000.jsonl.gz"
  victim.write_bytes(victim.read_bytes()[:-40])
  with pytest.raises(UserError, match=f"{victim}: damaged file"):
    collection.register_flan_collection(str(tmp_path / "gz"), byte_vocabulary(), prefix="bad")
  _generator().generate(str(tmp_path / "pq"), 0.0001, "parquet", log=lambda _: None, inputs_chars=(20, 40),
                        targets_chars=(4, 8))
  victim = tmp_path / "pq" / "dialog_fsopt_data" / "part-00000.parquet"
  victim.write_bytes(victim.read_bytes()[:100])
  with pytest.raises(UserError, match=f"{victim}: damaged Parquet file"):
    collection.register_flan_collection(str(tmp_path / "pq"), byte_vocabulary(), prefix="bad2")


def test_training_on_the_collection_resumes_bitwise_from_the_saved_position(synthetic, tmp_path):
  from test_train import assert_bitwise_equal, run_in_process
  flags = ["--gin.MIXTURE_OR_TASK_NAME='synth'", "--gin.CheckpointConfig.period=2"]
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  run_in_process(straight, 4, *flags)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))  # as if stopped after step 2
  lines = run_in_process(resumed, 4, *flags)
  assert "restored the input position at step 2" in lines
  assert_bitwise_equal(straight, resumed, 4)


def test_a_findings_task_subset_streams_with_flans_template_mix(synthetic):
  """`flan-jax findings` draws tasks of the collection into a new seqio mixture: it streams too, each task at
  its rate and, within it, its template types as FLAN mixes them."""
  from flan_jax import findings
  name = findings.mixture_subset("synth", 16, 0)
  stream = collection.stream(name, LENGTHS, 4)
  mixture = seqio.get_mixture_or_task(name)
  rates = {t.source.task: mixture.get_rate(t) for t in mixture.tasks}
  kept = collections.Counter(e[2] for _, e in zip(range(3_000), stream.examples()))
  assert set(kept) <= set(rates) and len(kept) > 8
  total, drawn = sum(rates.values()), sum(kept.values())
  for task, rate in rates.items():  # each task at its rate (binomial spread: 4 standard deviations)
    expected = drawn * rate / total
    assert abs(kept[task] - expected) <= 4 * np.sqrt(expected) + 1, (task, kept[task], expected)
  full = collection.UNIT_RATES["synth"]
  for task in rates:  # within a task, its template types in the full mixture's proportions
    mine = {tt: p for (t, tt), p in stream.keep.items() if t == task}
    assert set(mine) == {tt for (t, tt) in full if t == task}
  it = iter(stream)
  assert next(it)["encoder_input_tokens"].shape == (4, LENGTHS["inputs"])
  it.close()


def test_only_cot_and_dialog_mix_their_input_inversion_tasks_apart(synthetic):
  """Flan's own `_ii` tasks are tasks like the others; CoT's get 0.3 / 1.3 of the submix."""
  cot = collection.UNIT_RATES["synth_cot"]
  assert abs(sum(r for (t, _), r in cot.items() if t.endswith("_ii")) / sum(cot.values()) - 0.3 / 1.3) < 1e-9
  flan = collection.UNIT_RATES["synth_flan"]
  base = [r for (t, tt), r in flan.items() if tt == "zs_opt" and not t.endswith("_ii")]
  inverted = [r for (t, tt), r in flan.items() if tt == "zs_opt" and t.endswith("_ii")]
  rows = synthetic[1]["flan"]
  # within a template type every flan task is weighed by its capped rows alone, _ii or not
  per_row = {t: r / min(-(-rows[t] // 4), collection.CAPS["flan"]) for (t, tt), r in flan.items() if tt == "zs_opt"}
  assert base and inverted and max(per_row.values()) / min(per_row.values()) < 1 + 1e-9

"""The Flan Collection from its published files: a small sample in the export's schema (JSON lines, gzip and
Parquet; two submixes, several template types and tasks) registers as tasks and mixtures with the paper's caps and
weights, streams its rows as written, splits across hosts, and a bad folder is one clear error."""

import gzip
import importlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio

from flan_jax.data import collection, collection_files, listing, mixing, pipeline
from flan_jax.data.collection import register_flan_collection
from flan_jax.errors import UserError
from flan_jax.vocab import byte_vocabulary

LENGTHS = {"inputs": 512, "targets": 64}
SOURCES = {"flan": "Flan2021", "cot": "CoT"}


def _rows(submix, task, template_type, n):
  return [{"inputs": f"{task} {template_type} question {i}?\n\nOPTIONS:\n- yes\n- no", "targets": f"answer {i}",
           "_task_name": task, "_task_source": SOURCES[submix], "_template_type": template_type}
          for i in range(n)]


def _jsonl(path, rows, compress=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(r) + "\n" for r in rows).encode()
  path.write_bytes(gzip.compress(text) if compress else text)


def _parquet(path, rows, row_group_size):
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)


# (folder, file, rows): flan in JSON lines and Parquet (row groups of 4: cola in both, anli in the second); cot in
# plain and gzip JSON lines, gsm8k spread over two files, with an input-inversion task.
COLA = "glue/cola:2.0.0"
SAMPLE = [
    ("flan_zsopt", "part-0.jsonl", _rows("flan", COLA, "zs_opt", 6) + _rows("flan", "anli_r1", "zs_opt", 2)),
    ("flan_fsopt_data", "part-0.parquet", _rows("flan", COLA, "fs_opt", 5) + _rows("flan", "anli_r1", "fs_opt", 3)),
    ("flan_zsnoopt", "part-0.jsonl", _rows("flan", "anli_r1", "zs_noopt", 4)),
    ("cot_zsopt", "a.jsonl", _rows("cot", "cot_gsm8k", "zs_opt", 5) + _rows("cot", "cot_esnli", "zs_opt", 2)),
    ("cot_fsopt", "b.jsonl.gz", _rows("cot", "cot_gsm8k", "fs_opt", 3) + _rows("cot", "cot_gsm8k_ii", "fs_opt", 4)),
]


@pytest.fixture
def sample(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  root = tmp_path / "flan_collection"
  for folder, name, rows in SAMPLE:
    if name.endswith(".parquet"):
      _parquet(root / folder / name, rows, row_group_size=4)
    else:
      _jsonl(root / folder / name, rows, compress=name.endswith(".gz"))
  (root / "README.md").write_text("not a submix")
  return root


def _written(task):
  return sorted((r["inputs"], r["targets"]) for _, _, rows in SAMPLE for r in rows if r["_task_name"] == task)


def _read(name, shard=None, seed=0):
  """(inputs, targets) of one epoch, decoded from the tokens (EOS dropped)."""
  provider = seqio.get_mixture_or_task(name)
  ds = provider.get_dataset(LENGTHS, split="train", shuffle=True, seed=seed, shard_info=shard, num_epochs=1)
  vocab = provider.output_features["inputs"].vocabulary
  return [(vocab.decode(ex["inputs"].tolist()), vocab.decode(ex["targets"].tolist())) for ex in pipeline.iterate(ds)]


def test_tasks_mixtures_and_rates_as_the_paper_caps_and_weights_them(sample, monkeypatch):
  monkeypatch.setitem(collection.CAPS, "flan", 4)  # small caps, so that they bite
  monkeypatch.setitem(collection.CAPS, "cot", 4)
  mixtures = register_flan_collection(str(sample), byte_vocabulary())
  assert mixtures == ["flan2022", "flan2022_cot", "flan2022_flan"]
  assert sorted(t.name for t in seqio.get_mixture_or_task("flan2022").tasks) == sorted([
      "flan2022_flan_glue_cola_2_0_0", "flan2022_flan_anli_r1",
      "flan2022_cot_cot_gsm8k", "flan2022_cot_cot_esnli", "flan2022_cot_cot_gsm8k_ii"])
  assert seqio.get_mixture_or_task("flan2022_flan_anli_r1").num_input_examples("train") == 2 + 3 + 4

  # FLAN's mixing: each template type's tasks by min(rows, cap), the template types of a submix equally.
  # flan: zs_opt cola min(6,4), anli 2; fs_opt cola min(5,4), anli 3; zs_noopt anli 4.
  flan = {"flan2022_flan_glue_cola_2_0_0": (4 / 6 + 4 / 7) / 3, "flan2022_flan_anli_r1": (2 / 6 + 3 / 7 + 1) / 3}
  # cot without its input-inversion task: zs_opt gsm8k min(5,4), esnli 2; fs_opt gsm8k 3.
  cot_base = {"flan2022_cot_cot_gsm8k": (4 / 6 + 1) / 2, "flan2022_cot_cot_esnli": (2 / 6) / 2}
  assert mixing.any_rates("flan2022_flan") == pytest.approx(flan)
  assert mixing.any_rates("flan2022_cot_base") == pytest.approx(cot_base)
  assert mixing.any_rates("flan2022_cot_ii") == {"flan2022_cot_cot_gsm8k_ii": 1.0}
  # Submix weights flan 0.4, cot 0.05; inside cot, the input-inversion tasks at 0.3 against 1.
  expected = {**{t: 0.4 * r for t, r in flan.items()}, **{t: 0.05 * (1 / 1.3) * r for t, r in cot_base.items()},
              "flan2022_cot_cot_gsm8k_ii": 0.05 * 0.3 / 1.3}
  assert mixing.any_rates("flan2022") == pytest.approx(expected)
  assert collection.UNIT_RATES["flan2022_flan"][("anli_r1", "zs_noopt")] == pytest.approx(1 / 3)

  lines = listing.list_lines()
  assert any(line.startswith("flan2022_flan_anli_r1 ") and line.endswith("train 9") for line in lines)
  assert any(line.startswith("flan2022 ") and "flan2022_cot_cot_gsm8k_ii: 0.0115385" in line for line in lines)


def test_examples_come_out_as_written_from_every_format(sample):
  register_flan_collection(str(sample), byte_vocabulary())
  for task in ("glue/cola:2.0.0", "cot_gsm8k", "cot_gsm8k_ii"):  # JSON lines + Parquet, JSON lines + gzip
    name = f"flan2022_{'cot' if task.startswith('cot') else 'flan'}_{collection._safe(task)}"
    assert sorted(_read(name)) == _written(task)
  shown = listing.show_lines("flan2022_cot", "train", 3, LENGTHS)  # `flan-jax tasks show` on a mixture
  assert len(shown) == 12 and all(text in {r["inputs"] for _, _, rows in SAMPLE for r in rows} for text in shown[1::4])


def test_host_shards_are_disjoint_and_cover_the_task(sample):
  """By file where a task has as many files as hosts (gsm8k: 5 rows in one, 3 in the other), else by example."""
  register_flan_collection(str(sample), byte_vocabulary())
  for task, sizes in [("flan2022_cot_cot_gsm8k", [3, 5]), ("flan2022_cot_cot_esnli", [1, 1])]:
    shards = [_read(task, seqio.ShardInfo(i, 2)) for i in range(2)]
    assert sorted(map(len, shards)) == sizes and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(_read(task))


def test_counts_are_kept_and_reused_while_the_files_are_unchanged(sample, monkeypatch):
  register_flan_collection(str(sample), byte_vocabulary())
  monkeypatch.setattr(collection_files, "_count", lambda path: pytest.fail(f"{path} counted again"))
  register_flan_collection(str(sample), byte_vocabulary())
  assert seqio.get_mixture_or_task("flan2022_cot_cot_gsm8k").num_input_examples("train") == 8


def _one_line_error(directory, match):
  with pytest.raises(UserError, match=match) as e:
    register_flan_collection(str(directory), byte_vocabulary())
  assert "\n" not in str(e.value)


def test_a_bad_folder_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  _one_line_error(tmp_path / "absent", "Flan Collection directory not found")
  (tmp_path / "empty" / "misc").mkdir(parents=True)
  _one_line_error(tmp_path / "empty", "no Flan Collection folders")
  (tmp_path / "no_files" / "t0_zsopt").mkdir(parents=True)
  (tmp_path / "no_files" / "t0_zsopt" / "notes.txt").write_text("no data here")
  _one_line_error(tmp_path / "no_files", r"t0_zsopt: no data files")

  rows = _rows("flan", "anli_r1", "zs_opt", 3)
  _jsonl(tmp_path / "jsonl" / "flan_zsopt" / "a.jsonl", rows[:1] + [{"inputs": "q", "targets": "a"}])
  _one_line_error(tmp_path / "jsonl", r"a\.jsonl:2: missing column\(s\) _task_name, _template_type")
  _jsonl(tmp_path / "broken" / "flan_zsopt" / "a.jsonl", rows)
  with open(tmp_path / "broken" / "flan_zsopt" / "a.jsonl", "a") as f:
    f.write('{"inputs": "cut off\n')
  _one_line_error(tmp_path / "broken", r"a\.jsonl:4: malformed JSON line")
  _parquet(tmp_path / "parquet" / "niv2_fsopt" / "a.parquet", [{"inputs": "q", "targets": "a"}], 10)
  _one_line_error(tmp_path / "parquet", r"a\.parquet: missing column\(s\) _task_name, _template_type")


def test_the_builtin_module_registers_the_directory_in_the_environment(sample, monkeypatch, shared_data):
  monkeypatch.setenv(collection.ENV, str(sample))
  monkeypatch.delenv("FLAN_JAX_VOCAB", raising=False)
  import flan_jax_tasks.flan_collection as module
  importlib.reload(module)
  task = seqio.get_mixture_or_task("flan2022_flan_anli_r1")
  assert isinstance(task.output_features["targets"].vocabulary, seqio.SentencePieceVocabulary)
  assert "flan2022_dialog" not in seqio.MixtureRegistry.names()  # only the submixes found


def test_flan2022_without_the_environment_variable_says_what_to_set(monkeypatch):
  from flan_jax.data.registration import get_provider
  monkeypatch.delenv(collection.ENV, raising=False)
  with pytest.raises(UserError, match=r"\$FLAN_JAX_FLAN_COLLECTION, which is unset"):
    get_provider("flan2022_not_registered_here")

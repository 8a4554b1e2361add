"""Flan data through seqio: tasks, mixtures and caps, packing, determinism, sharding, held-out tasks, CLI."""

import json
import os
import shutil

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from flan_jax import cli
from flan_jax.data import FlanTemplates, Template, add_mixture, mixing, pipeline, register_file_task
from flan_jax.data.registration import get_provider, register_prompt_task, register_records_task
from flan_jax.errors import UserError
from flan_jax.vocab import byte_vocabulary

import flan_jax_tasks.demo  # noqa: F401  (registers the demo tasks)

LENGTHS = {"inputs": 256, "targets": 64}


def _texts(name, split="train", n=40, seed=0, shard=None, shuffle=True, pretokenized=False):
  """(inputs, targets) as decoded from the tokens, or (a task only) the text before tokenization."""
  ds = get_provider(name).get_dataset(LENGTHS, split=split, shuffle=shuffle, seed=seed, shard_info=shard,
                                      num_epochs=1)
  if pretokenized:
    return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
            for ex in pipeline.iterate(ds.take(n))]
  vocab = get_provider(name).output_features["inputs"].vocabulary
  return [(vocab.decode(ex["inputs"].tolist()), vocab.decode(ex["targets"].tolist()))
          for ex in pipeline.iterate(ds.take(n))]


def test_same_seed_same_stream_other_seed_other_stream():
  assert _texts("demo_mixture", seed=3) == _texts("demo_mixture", seed=3)
  assert _texts("demo_mixture", seed=3) != _texts("demo_mixture", seed=4)


def test_host_shards_are_disjoint_and_cover_the_split():
  records = {"train": [{"inputs": f"question {i}", "targets": f"answer {i}"} for i in range(30)]}
  register_prompt_task("test_shard_task", records, byte_vocabulary())
  full = set(_texts("test_shard_task", n=100, shuffle=False))
  shards = [set(_texts("test_shard_task", n=100, shuffle=False, shard=seqio.ShardInfo(i, 3))) for i in range(3)]
  assert len(full) == 30
  assert all(not (a & b) for i, a in enumerate(shards) for b in shards[i + 1:])
  assert set.union(*shards) == full


def _records_task(name, n):
  register_records_task(name, {"train": [{"x": str(i), "answer": str(i)} for i in range(n)]},
                        FlanTemplates((Template("echo {x}"),)), byte_vocabulary())


def test_mixture_rates_apply_caps():
  _records_task("test_big", 50)
  _records_task("test_small", 10)
  add_mixture("test_capped", [("test_big", 20), ("test_small", 20)])
  assert mixing.rates("test_capped") == {"test_big": 20.0, "test_small": 10.0}
  add_mixture("test_uncapped", [("test_big", None)])
  assert mixing.rates("test_uncapped") == {"test_big": 50.0}


def test_submixtures_are_scaled_to_their_weights():
  _records_task("test_a", 30)
  _records_task("test_b", 10)
  _records_task("test_c", 5)
  add_mixture("test_sub1", [("test_a", None), ("test_b", None)])
  add_mixture("test_sub2", [("test_c", None)])
  add_mixture("test_top", [("test_sub1", 0.8), ("test_sub2", 0.2)])
  rates = mixing.rates("test_top")
  assert rates == pytest.approx({"test_a": 0.6, "test_b": 0.2, "test_c": 0.2})
  # seqio samples with these rates
  mixture = seqio.get_mixture_or_task("test_top")
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == pytest.approx(rates)


def test_mixture_refuses_mixed_kinds_and_unknown_names():
  _records_task("test_d", 3)
  with pytest.raises(UserError, match="neither a registered task nor mixture"):
    add_mixture("test_bad", [("test_nope", 1)])
  with pytest.raises(UserError, match="not both"):
    add_mixture("test_bad", [("test_d", 1), ("demo_mixture", 0.5)])


def test_packing_keeps_examples_apart():
  ds = pipeline.get_dataset("demo_mixture", "train", {"inputs": 256, "targets": 128}, seed=0, batch_size=4)
  batches = list(pipeline.iterate(ds.take(5)))
  packed_rows = 0
  for b in batches:
    for row in range(4):
      for prefix, tokens in (("encoder", b["encoder_input_tokens"][row]), ("decoder", b["decoder_target_tokens"][row])):
        seg, pos = b[f"{prefix}_segment_ids"][row], b[f"{prefix}_positions"][row]
        assert np.array_equal(seg > 0, tokens > 0)             # padding exactly where segment id 0
        assert np.all(np.diff(seg[seg > 0]) >= 0)               # segments are contiguous and increasing
        for s in np.unique(seg[seg > 0]):                       # positions restart at 0 per example
          assert np.array_equal(pos[seg == s], np.arange(np.sum(seg == s)))
      seg, tgt, inp = b["decoder_segment_ids"][row], b["decoder_target_tokens"][row], b["decoder_input_tokens"][row]
      starts = np.flatnonzero(seg > 0)[np.r_[True, np.diff(seg[seg > 0]) != 0]]
      assert np.all(inp[starts] == 0)                           # each example's decoder starts fresh
      inner = [i for i in range(1, len(seg)) if seg[i] > 0 and seg[i] == seg[i - 1]]
      assert np.array_equal(inp[inner], tgt[np.array(inner) - 1])  # teacher forcing within an example only
      assert np.array_equal(b["decoder_loss_weights"][row] > 0, tgt > 0)
      packed_rows += seg.max() > 1
  assert packed_rows > 0


def test_packing_efficiency_counts_by_hand():
  batch = {"encoder_input_tokens": np.array([[5, 6, 7, 0], [8, 0, 0, 0]]),
           "decoder_target_tokens": np.array([[3, 1, 4, 1], [9, 1, 0, 0]]),
           "decoder_segment_ids": np.array([[1, 1, 2, 2], [1, 1, 0, 0]])}
  eff = pipeline.packing_efficiency([batch, batch])
  assert eff == {"inputs": 4 / 8, "targets": 6 / 8, "examples_per_row": 3 / 2}


def test_unknown_name_lists_closest():
  with pytest.raises(UserError, match="unknown task or mixture 'demo_mixtur'; closest: demo_mixture"):
    get_provider("demo_mixtur")


def test_file_task_one_call_and_bad_files(tmp_path):
  good = tmp_path / "qa.jsonl"
  good.write_text('{"q": "two plus two", "a": "four"}\n{"q": "sky colour", "a": "blue"}\n')
  register_file_task("test_user_qa", {"train": str(good)}, ("Question: {q}", "{a}"), byte_vocabulary())
  texts = _texts("test_user_qa", shuffle=False)
  assert set(t for _, t in texts) == {"four", "blue"}
  assert all(i.endswith("Question: two plus two") or i.endswith("Question: sky colour") for i, _ in texts)

  tsv = tmp_path / "qa.tsv"
  tsv.write_text("q\ta\nwhat\tthat\n")
  register_file_task("test_user_tsv", {"train": str(tsv)}, ("Q: {q}", "{a}"), byte_vocabulary())
  assert _texts("test_user_tsv", shuffle=False)[0] == ("Q: what", "that")

  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(UserError, match="empty.jsonl: empty file"):
    register_file_task("test_empty", {"train": str(empty)}, ("{q}", "{a}"), byte_vocabulary())
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"q": "ok", "a": "ok"}\n{"q": broken}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON line"):
    register_file_task("test_bad_json", {"train": str(bad)}, ("{q}", "{a}"), byte_vocabulary())


def test_missing_template_field_surfaces_from_tf_data(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text('{"question": "hi", "a": "x"}\n')
  register_file_task("test_missing_field", {"train": str(path)}, ("Q: {q}", "{a}"), byte_vocabulary())
  with pytest.raises(UserError, match=r"task test_missing_field: template field 'q' is missing from example "
                                      r"\{'question': 'hi', 'a': 'x'\}"):
    _texts("test_missing_field")


def test_tfds_tasks_preprocess_mock_examples_of_the_real_schema(tmp_path, monkeypatch):
  import tempfile

  import flan_jax_tasks.flan_tfds as flan_tfds
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # TFDS leaves an empty temp folder for each builder
  flan_tfds.register(byte_vocabulary())
  nli = {"yes", "it is not possible to tell", "no"}
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    for name, (tfds_name, *_rest) in flan_tfds.TASKS.items():
      task = seqio.get_mixture_or_task(f"flan_{name}")
      ds = task.preprocessors[0](tfds.load(tfds_name, split="train"), LENGTHS, task.output_features)
      examples = [(ex["inputs"].decode(), ex["targets"].decode()) for ex in pipeline.iterate(ds)]
      assert len(examples) == 8 and all(i and t for i, t in examples), name
      if name in ("mnli", "anli_r1"):
        assert {t for _, t in examples} <= nli, name
      if name == "esnli":
        assert all(t in nli or "\nThe answer is " in t for _, t in examples), name
      if name == "gsm8k":  # the short answer alone, or the rationale then "The answer is" it
        raw = tfds.as_numpy(tfds.load(tfds_name, split="train"))
        answers = [r["short_answer"].decode().strip().replace(",", "") for r in raw]
        assert all(t == a or t.endswith(f"\nThe answer is {a}.") for (_, t), a in zip(examples, answers)), name


# --- held-out tasks from ../shared/data ---

def test_mmlu_prompt_is_the_original_5_shot_format(shared_data):
  import flan_jax_tasks.held_out  # noqa: F401
  texts = _texts("mmlu_abstract_algebra", split="test", n=1, shuffle=False, pretokenized=True)
  inputs, target = texts[0]
  assert inputs.startswith("The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
                           "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n")
  assert inputs.count("\nAnswer:") == 6 and inputs.endswith("\nAnswer:")
  assert target in "ABCD" and len(target) == 1
  assert len(seqio.get_mixture_or_task("mmlu").tasks) == 9


def test_bbh_tasks_come_from_the_directory(shared_data, tmp_path):
  from flan_jax_tasks.held_out import register_bbh
  src = os.path.join(shared_data, "bbh")
  os.makedirs(tmp_path / "bbh" / "tasks")
  os.makedirs(tmp_path / "bbh" / "cot-prompts")
  shutil.copy(os.path.join(src, "tasks", "navigate.json"), tmp_path / "bbh" / "tasks" / "my_navigate.json")
  shutil.copy(os.path.join(src, "cot-prompts", "navigate.txt"), tmp_path / "bbh" / "cot-prompts" / "my_navigate.txt")
  names = register_bbh(str(tmp_path / "bbh"), byte_vocabulary(), prefix="mybbh")
  assert names == ["mybbh_my_navigate_cot", "mybbh_my_navigate_direct"]
  assert len(seqio.get_mixture_or_task("mybbh_cot").tasks) == 1
  cot_in, cot_target = _texts("mybbh_my_navigate_cot", split="test", n=1, shuffle=False, pretokenized=True)[0]
  direct_in, direct_target = _texts("mybbh_my_navigate_direct", split="test", n=1, shuffle=False, pretokenized=True)[0]
  with open(os.path.join(src, "tasks", "navigate.json")) as f:
    first = json.load(f)["examples"][0]
  assert cot_target == direct_target == first["target"]
  assert cot_in.endswith(f"Q: {first['input']}\nA: Let's think step by step.")
  assert direct_in.endswith(f"Q: {first['input']}\nA:")
  assert cot_in.count("So the answer is") == 3 and "So the answer is" not in direct_in
  assert direct_in.count("\nA: ") == 3 and "BENCHMARK DATA" not in cot_in


def test_all_shared_bbh_files_register(shared_data):
  import flan_jax_tasks.held_out  # noqa: F401
  files = os.listdir(os.path.join(shared_data, "bbh", "tasks"))
  assert len(seqio.get_mixture_or_task("bbh_cot").tasks) == len(files) == 24


# --- CLI ---

def test_tasks_list_and_show_cli(capsys):
  assert cli.main(["tasks", "list"]) == 0
  out = capsys.readouterr().out
  held_in = next(line for line in out.splitlines() if line.startswith("demo_held_in "))
  assert held_in.endswith("validation 200, train 1600")  # the train split holds the few-shot exemplars
  assert "demo_mixture_rules: " in next(line for line in out.splitlines() if line.startswith("demo_mixture "))
  assert cli.main(["tasks", "show", "demo_held_out_rules", "--n", "2", "--split", "validation"]) == 0
  out = capsys.readouterr().out
  assert out.count("--- example") == 4 and "tokens)" in out


def test_tasks_show_unknown_name_is_one_line(capsys):
  assert cli.main(["tasks", "show", "demo_held_inn"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("flan-jax: error: unknown task or mixture 'demo_held_inn'; closest: demo_held_in")
  assert "\n" not in err


def test_tasks_show_a_users_module_from_the_current_directory(tmp_path, monkeypatch, capsys):
  (tmp_path / "qa.jsonl").write_text('{"question": "two plus two", "answer": "four"}\n')
  (tmp_path / "user_tasks_for_test.py").write_text(
      "from flan_jax.data import register_file_task\nfrom flan_jax.vocab import byte_vocabulary\n"
      "register_file_task('user_qa', {'train': 'qa.jsonl'}, [('Answer: {question}', '{answer}')], byte_vocabulary())\n")
  monkeypatch.chdir(tmp_path)
  assert cli.main(["tasks", "show", "user_qa", "--module", "user_tasks_for_test", "--n", "1"]) == 0
  out = capsys.readouterr().out
  assert "Answer: two plus two" in out and "four" in out
  assert cli.main(["tasks", "list", "--module", "no_such_tasks_module"]) == 2
  assert "task module 'no_such_tasks_module' not found" in capsys.readouterr().err

"""The demo's rule family (tasks/demo.py): rules applied right, held-out rules and evaluation texts never in
training, Flan formats with CoT targets the scorer reads, determinism; and `flan-jax findings --quick`."""

import json
import zlib

import numpy as np
import pytest

from flan_jax import cli
from flan_jax.data import pipeline
from flan_jax.data.registration import get_provider
from flan_jax.evaluation import answer_of

import flan_jax_tasks.demo as demo

LENGTHS = {"inputs": 512, "targets": 128}


def _rendered(name, split, n, seed=0):
  ds = get_provider(name).get_dataset(LENGTHS, split=split, shuffle=split == "train", seed=seed, num_epochs=1)
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in pipeline.iterate(ds.take(n))]


def demo_records(task, split):
  """The generated records one of the family's seqio tasks serves."""
  get_provider(task)
  return list(demo.RECORDS[task][split])


@pytest.mark.parametrize("steps, text, answer", [
    ([("replace", ("k", "m"))], "kakmok", "mammom"),
    ([("delete", ("a",))], "banana split", "bnn split"),
    ([("double", ("o",))], "dog cat", "doog cat"),
    ([("reverse", ())], "ab cd", "dc ba"),
    ([("rotate", ())], "abcd", "bcda"),
    ([("upper", ())], "ab cd", "AB CD"),
    ([("contains", ("z",))], "abc", "no"),
    ([("count", ("b",))], "abba b", "3"),
    ([("reverse", ()), ("replace", ("a", "x"))], "abcda", "xdcbx"),
    ([("delete", ("c",)), ("double", ("a",))], "cabca", "aabaa"),
])
def test_rules_on_hand_checked_cases(steps, text, answer):
  rule = demo.Rule(tuple(demo.Step(op, letters) for op, letters in steps))
  fields = demo.example(rule, text)
  assert fields["answer"] == answer
  assert fields["rationale"].endswith(f"Step {len(steps)}: {answer}.")


def test_instructions_state_the_rule():
  rule = demo.Rule((demo.Step("reverse"), demo.Step("replace", ("k", "m"))))
  assert rule.instruction == "Reverse the text, then replace every k with m."
  assert demo.Rule((demo.Step("contains", ("q",)),)).instruction == "Does the text contain the letter q?"


def test_generator_is_deterministic():
  trained, held_out, compositions = demo.rule_split()
  assert demo.rule_split.__wrapped__() == (trained, held_out, compositions)
  assert demo.generate(trained[:5], "train", 40, 7) == demo.generate(trained[:5], "train", 40, 7)
  assert demo.generate(trained[:5], "train", 40, 7) != demo.generate(trained[:5], "train", 40, 8)
  assert _rendered("demo_held_out_rules", "validation", 30) == _rendered("demo_held_out_rules", "validation", 30)


def test_draws_are_numpys_integers():
  """demo.Draws replays numpy's Generator.integers (scalar or vector draws, spans from 1 to nearly 2**32) from
  the same seed, so the generated data is what numpy's draws gave."""
  ours, theirs, spans = (demo.Draws(np.random.default_rng(3), block=5), np.random.default_rng(3),
                         np.random.default_rng(4))
  for _ in range(20000):
    low, high = 2, 2 + int(spans.choice([1, 2, 3, 10, 12345, 2**31 + 7, 2**32 - 1]))
    count = int(spans.integers(1, 4))
    expected = theirs.integers(low, high, count).tolist() if count > 1 else [int(theirs.integers(low, high))]
    assert [ours.integers(low, high) for _ in range(count)] == expected


def test_generated_records_are_pinned():
  """The demo's data, and so its figures in README.md, stay what they are: checksums of two splits' records."""
  trained = demo.rule_split()[0]
  assert zlib.crc32(json.dumps(demo.generate(trained, "train", 3000, 1)).encode()) == 1340006862
  assert zlib.crc32(json.dumps(demo.generate(trained, "validation", 500, 2)).encode()) == 187665028


def test_family_size_and_held_out_rules():
  trained, held_out, compositions = demo.rule_split()
  names = {r.name for r in trained}
  assert len(trained) == demo.NUM_TRAINED == 1024 and len(held_out) >= 30 and len(compositions) == 100
  assert not names & {r.name for r in held_out + compositions}
  assert all(len(r.steps) == 2 for r in compositions)
  # unseen compositions are of operations that were trained on their own
  assert all(demo.Rule((s,)).name in names for r in compositions for s in r.steps)
  assert {r.steps[0].op for r in held_out} >= {"replace", "delete", "double"}
  assert "held_out" in "demo_held_out_rules" and "held_out" in "demo_held_out_compositions"


def test_no_held_out_rule_or_evaluation_text_in_any_training_split():
  """Checked over the generated training data of both mixtures, not by construction."""
  trained, held_out, compositions = demo.rule_split()
  held_out_instructions = {r.instruction for r in held_out + compositions}
  train_texts, train_instructions = set(), set()
  for task in ("demo_mixture_rules", "demo_mixture_no_cot_rules"):
    for record in demo_records(task, "train"):
      train_texts.add(record["text"])
      train_instructions.add(record["instruction"])
  assert train_instructions == {r.instruction for r in trained}
  assert not train_instructions & held_out_instructions
  for task in ("demo_held_in", "demo_held_out_rules", "demo_held_out_compositions"):
    eval_texts = {r["text"] for r in demo_records(task, "validation")}
    assert len(eval_texts) > 100 and not eval_texts & train_texts, task
  # and in the rendered stream the model trains on
  rendered = " ".join(i for i, _ in _rendered("demo_mixture_rules", "train", 300))
  assert not any(instruction in rendered for instruction in held_out_instructions)


def test_four_formats_options_and_cot_targets_end_with_the_answer():
  texts = _rendered("demo_held_out_rules", "validation", 200)
  records = demo_records("demo_held_out_rules", "validation")[:200]
  few_shot = [i for i, _ in texts if "\n\n\n" in i]
  cot = [(i, t) for i, t in texts if "step by step" in i]
  assert few_shot and cot and len(few_shot) < 200 and len(cot) < 200
  assert any("\n\n\n" in i for i, _ in cot) and any("\n\n\n" not in i for i, _ in cot)
  assert any("OPTIONS:\n- yes\n- no" in i for i, _ in texts) or any("OPTIONS:\n- 0" in i for i, _ in texts)
  for (inputs, targets), record in zip(texts, records):  # unshuffled: in the records' order
    assert record["text"] in inputs.split("\n\n\n")[-1] and answer_of(targets) == record["answer"]
  for inputs, targets in cot:
    assert targets.endswith(f"The answer is {answer_of(targets)}.")
  # few-shot exemplars demonstrate the example's own rule
  instructions = {r.instruction for r in demo.rule_split()[1]}
  for inputs in few_shot:
    blocks = [{s for s in instructions if s in block} for block in inputs.split("\n\n\n")]
    assert len(blocks[0]) == 1 and all(b == blocks[0] for b in blocks), inputs


def test_cot_and_direct_variants_render_only_their_formats():
  cot = _rendered("demo_held_out_compositions_cot", "validation", 40)
  direct = _rendered("demo_held_out_compositions_direct", "validation", 40)
  assert all("step by step" in i and "\nThe answer is " in t for i, t in cot)
  assert all("step by step" not in i and "The answer is" not in t for i, t in direct)


def test_rule_subset_draws_nested_rules():
  four = demo_records(get_provider(demo.rule_subset("demo_mixture", 4, 0)).tasks[0].name, "train")
  sixteen = demo_records(get_provider(demo.rule_subset("demo_mixture", 16, 0)).tasks[0].name, "train")
  assert len({r["instruction"] for r in four}) == 4 and len({r["instruction"] for r in sixteen}) == 16
  assert {r["instruction"] for r in four} < {r["instruction"] for r in sixteen}


def test_findings_quick_writes_its_table_and_plot(tmp_path, capsys):
  out = tmp_path / "findings"
  assert cli.main(["findings", "--quick", "--out", str(out)]) == 0
  table = json.loads((out / "findings.json").read_text())
  assert [r["tasks"] for r in table["task_count"]] == [1, 4]
  assert all(len(r["held_out"]) == 2 and 0 <= r["held_out_mean"] <= 1 for r in table["task_count"])
  assert len(table["model_size"]) == 2 and table["model_size"][0]["parameters"] < table["model_size"][1]["parameters"]
  assert [r["training"] for r in table["chain_of_thought"]] == ["with_cot", "without_cot"]
  # the CoT mixture is the sweep's own: its row is the 4-task point of seed 0, evaluated on the CoT tasks too
  largest = json.loads((out / "points" / "4_tasks_seed0_tiny (demo).json").read_text())["metrics"]
  assert table["chain_of_thought"][0]["cot_prompts"] == largest["eval/demo_held_out_compositions_cot/accuracy"]
  assert "(a) Held-out accuracy against the number of training tasks" in (out / "findings.md").read_text()
  assert (out / "findings.png").read_bytes()[:4] == b"\x89PNG"
  # a second run keeps the points already done
  capsys.readouterr()
  assert cli.main(["findings", "--quick", "--out", str(out)]) == 0
  assert capsys.readouterr().out.count("done before, kept") == 6


def test_findings_summary_averages_over_seeds_and_picks_the_first_seed_for_the_size_row():
  """Means and spreads over seeds, by hand: --quick's accuracies after 2 steps are mostly 0."""
  from flan_jax import findings

  def point(kind, what, seed, size, parameters, **accuracy):
    return {"kind": kind, "what": what, "seed": seed, "size": size, "parameters": parameters,
            "metrics": {f"eval/{task}/accuracy": value for task, value in accuracy.items()}}

  results = {
      "1_0": point("tasks", 1, 0, "tiny", 100, out_a=0.1, out_b=0.3, held=0.5),
      "1_1": point("tasks", 1, 1, "tiny", 100, out_a=0.3, out_b=0.5, held=0.7),
      "4_0": point("tasks", 4, 0, "tiny", 100, out_a=0.6, out_b=0.8, held=0.9, cot_a=0.4, direct_a=0.5),
      "4_1": point("tasks", 4, 1, "tiny", 100, out_a=0.2, out_b=0.4, held=0.8),
      "d32": point("size", 4, 0, "d32", 50, out_a=0.0, out_b=0.2, held=0.3),
      "cot": point("cot", "with_cot", 0, "tiny", 100, cot_a=0.4, direct_a=0.5),
      "no_cot": point("cot", "without_cot", 0, "tiny", 100, cot_a=0.1, direct_a=0.6)}
  table = findings.summarize(results, ["out_a", "out_b"], ["held"], ["cot_a"], ["direct_a"])
  rows = {r["tasks"]: r for r in table["task_count"]}
  assert rows[1]["seeds"] == [0, 1] and rows[1]["held_out"] == pytest.approx([0.2, 0.4])
  assert rows[1]["held_out_mean"] == pytest.approx(0.3) and rows[1]["held_in_mean"] == pytest.approx(0.6)
  assert (rows[4]["held_out_min"], rows[4]["held_out_max"]) == pytest.approx((0.3, 0.7))
  assert [(r["size"], r["held_out"]) for r in table["model_size"]] == [("d32", pytest.approx(0.1)),
                                                                       ("tiny", pytest.approx(0.7))]
  assert [(r["training"], r["cot_prompts"], r["direct_prompts"]) for r in table["chain_of_thought"]] == [
      ("with_cot", 0.4, 0.5), ("without_cot", 0.1, 0.6)]


def test_mixture_subset_draws_nested_tasks_of_any_mixture_with_their_rates(capsys):
  from flan_jax import findings
  from flan_jax.data import add_mixture
  from flan_jax.data.registration import register_prompt_task
  from flan_jax.errors import UserError
  from flan_jax.vocab import byte_vocabulary
  for i in range(5):
    rows = [{"inputs": f"q{j}", "targets": "a"} for j in range(i + 1)]
    register_prompt_task(f"test_subset_{i}", {"train": rows}, byte_vocabulary())
  add_mixture("test_subset_mix", [(f"test_subset_{i}", None) for i in range(5)])
  two, four = (get_provider(findings.mixture_subset("test_subset_mix", n, 3)) for n in (2, 4))
  assert len(two.tasks) == 2 and {t.name for t in two.tasks} < {t.name for t in four.tasks}
  assert all(two.get_rate(t) == int(t.name[-1]) + 1 for t in two.tasks)  # examples-proportional, as in the mixture
  with pytest.raises(UserError, match="has 5 tasks; cannot draw 6"):
    findings.mixture_subset("test_subset_mix", 6, 0)
  # a mixture registered with seqio directly lists with its rates
  assert cli.main(["tasks", "list"]) == 0
  assert "test_subset_mix_2_tasks_seed3 " in capsys.readouterr().out

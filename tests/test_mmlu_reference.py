"""MMLU against the reference that reproduces Flan-T5's published MMLU numbers, hendrycks/test evaluate_flan.py:
its prompt (format_subject, format_example, gen_prompt), its exemplar dropping while the prompt is over 2,048
tokens and its first decoder step's logits over A/B/C/D, written here after it with pandas, transformers and the
HuggingFace tokenizer, on a random-weight T5 of the real vocabulary exported to a HuggingFace folder. Nothing
here uses flan-jax's prompt or scoring helpers: a random model has no margin to hide another protocol."""

import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

import hf_reference
from flan_jax import cli, evaluation, hf, inference

CHOICES = ["A", "B", "C", "D"]


# --- evaluate_flan.py, as it stands there ---

def format_subject(subject):
  return "".join(" " + entry for entry in subject.split("_"))


def format_example(df, idx, include_answer=True):
  prompt = df.iloc[idx, 0]
  k = df.shape[1] - 2
  for j in range(k):
    prompt += "\n{}. {}".format(CHOICES[j], df.iloc[idx, j + 1])
  prompt += "\nAnswer:"
  if include_answer:
    prompt += " {}\n\n".format(df.iloc[idx, k + 1])
  return prompt


def gen_prompt(train_df, subject, k):
  prompt = "The following are multiple choice questions (with answers) about {}.\n\n".format(format_subject(subject))
  for i in range(k):
    prompt += format_example(train_df, i)
  return prompt


def reference_prompt(tokenizer, dev_df, test_df, subject, i, ntrain=5):
  k = ntrain
  prompt_end = format_example(test_df, i, include_answer=False)
  prompt = gen_prompt(dev_df, subject, k) + prompt_end
  while len(tokenizer(prompt).input_ids) > 2048:
    k -= 1
    prompt = gen_prompt(dev_df, subject, k) + prompt_end
  return prompt


@torch.no_grad()
def reference_answer(model, tokenizer, prompt):
  input_ids = tokenizer(prompt, return_tensors="pt").input_ids
  decoder_input_ids = model._shift_right(tokenizer("", return_tensors="pt").input_ids)
  logits = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits.flatten()
  probs = torch.nn.functional.softmax(torch.tensor([logits[tokenizer(c).input_ids[0]] for c in CHOICES]), dim=0)
  return {0: "A", 1: "B", 2: "C", 3: "D"}[int(np.argmax(probs.numpy()))]


def read(directory, subject, split):
  frame = pd.read_csv(os.path.join(directory, split, f"{subject}_{split}.csv"), header=None)
  return frame[:5] if split == "dev" else frame


# --- the checks ---

@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
  """(flan-jax checkpoint, the transformers model and tokenizer of its export): Flan-T5-small's architecture at a
  narrow width and one layer each side (the protocol, not depth, is under test), random weights, the real
  vocabulary."""
  root = tmp_path_factory.mktemp("mmlu_reference")
  config = hf_reference.flan_t5_small_config(shared_data, num_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                                             **hf_reference.NARROW)
  hf_reference.build(config).save_pretrained(str(root / "random"))
  ckpt = hf.import_hf(str(root / "random"), str(root / "ckpt"),
                      vocabulary=os.path.join(shared_data, "t5_vocab", "spiece.model"))
  assert cli.main(["export-hf", "--checkpoint", ckpt, "--out", str(root / "hf")]) == 0
  model = transformers.T5ForConditionalGeneration.from_pretrained(str(root / "hf")).eval()
  return ckpt, model, transformers.AutoTokenizer.from_pretrained(str(root / "hf"))


def test_eval_mmlu_with_default_flags_answers_as_evaluate_flan_does(exported, shared_data, tmp_path):
  ckpt, model, tokenizer = exported
  out = tmp_path / "results.json"
  assert cli.main(["eval", "--checkpoint", ckpt, "--tasks", "mmlu", "--batch_size", "16", "--output", str(out)]) == 0
  results = json.loads(out.read_text())["tasks"]
  directory = os.path.join(shared_data, "mmlu")
  subjects = sorted(f[:-len("_test.csv")] for f in os.listdir(os.path.join(directory, "test")))
  agree = total = 0
  for subject in subjects:
    dev_df, test_df = read(directory, subject, "dev"), read(directory, subject, "test")
    ours = results[f"mmlu_{subject}"]
    assert ours["split"] == "test" and ours["method"] == "first_token" and ours["inputs_cut"] == 0
    assert len(ours["predictions"]) == test_df.shape[0]
    for i, predicted in enumerate(ours["predictions"]):
      agree += predicted == reference_answer(model, tokenizer, reference_prompt(tokenizer, dev_df, test_df, subject, i))
      total += 1
  assert total == 1380 and agree / total >= 0.99, f"{agree} of {total} answers agree"


def test_exemplars_are_dropped_whole_as_evaluate_flan_drops_them(exported, t5_vocab, shared_data, tmp_path):
  """A subject whose exemplars are long: each prompt keeps the most exemplars that fit in 2,048 tokens, the same
  text as the reference's, and a question too long alone is cut and counted by the evaluator, never silently."""
  from flan_jax_tasks import held_out
  rng = np.random.default_rng(0)
  words = "the of a proof group ring field order inverse element cycle".split()  # about a token each
  text = lambda n: " ".join(rng.choice(words, n))
  questions = [[text(n)] + [text(8) for _ in range(4)] + ["C"] for n in (20, 400, 900, 1400, 2500)]
  for split, rows in (("dev", [[text(250)] + [text(8) for _ in range(4)] + ["B"] for _ in range(5)]),
                      ("val", questions), ("test", questions)):
    (tmp_path / split).mkdir()
    with open(tmp_path / split / f"long_algebra_{split}.csv", "w", newline="") as f:
      csv.writer(f).writerows(rows)
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(shared_data, "hf", "flan-t5-small"))
  dev_df, test_df = read(str(tmp_path), "long_algebra", "dev"), read(str(tmp_path), "long_algebra", "test")
  ours = held_out.mmlu_records(str(tmp_path), "long_algebra", "test", t5_vocab)
  kept = []
  for i in range(4):  # the fifth question alone is over 2,048 tokens: the reference never ends on it
    assert ours[i]["inputs"] == reference_prompt(tokenizer, dev_df, test_df, "long_algebra", i)
    kept.append(ours[i]["inputs"].count("\nAnswer: B\n\n"))
  assert kept[0] == 5 and kept == sorted(kept, reverse=True) and kept[-1] < kept[1]  # longer questions, fewer
  assert ours[4]["inputs"].count("\nAnswer: B\n\n") == 0 and len(tokenizer(ours[4]["inputs"]).input_ids) > 2048
  held_out.register_mmlu(str(tmp_path), t5_vocab, prefix="long_mmlu")
  result = evaluation.evaluate_task(inference.load(exported[0]), "long_mmlu_long_algebra", None, inference.Settings())
  assert result["inputs_cut"] == 1 and result["inputs_length"] == 2048 and result["examples"] == 5

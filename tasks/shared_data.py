"""Flan tasks over the real data in ../shared/data (or $FLAN_JAX_SHARED_DATA), for tests and examples.

GSM8K (chain of thought from its worked solutions), e-SNLI (options, and CoT from its explanations),
CREAK (yes/no claims with explanations) and NQ-Open (closed-book QA). Only dev/test files of e-SNLI and NQ-Open
are available here, so their 'train' split is e-SNLI dev / the first 3,000 NQ-Open dev questions, and
'validation' is e-SNLI test / the remaining NQ-Open questions. Registered only where the data exists.
"""

import os
import re

from flan_jax.data import COT_TARGET, FlanTemplates, Template, add_mixture, register_records_task
from flan_jax.data.paths import shared_data_dir
from flan_jax.data.registration import read_records
from flan_jax.vocab import sentencepiece_vocabulary

NLI_OPTIONS = ["yes", "it is not possible to tell", "no"]
NLI_ANSWERS = {"entailment": "yes", "neutral": "it is not possible to tell", "contradiction": "no"}


def gsm8k_fields(record):
  """The worked solution (calculator annotations removed) is the rationale; '#### N' is the answer."""
  solution, answer = record["answer"].split("####")
  rationale = re.sub(r"<<[^>]*>>", "", solution).strip()
  return {"question": record["question"], "rationale": rationale, "answer": answer.strip().replace(",", "")}


def esnli_fields(record):
  return {"premise": record["premise"], "hypothesis": record["hypothesis"], "options": NLI_OPTIONS,
          "answer": NLI_ANSWERS[record["label"]], "rationale": record["explanation"].strip().capitalize()}


def creak_fields(record):
  return {"sentence": record["sentence"], "options": ["yes", "no"],
          "answer": "yes" if record["label"] == "true" else "no", "rationale": record["explanation"]}


def nq_fields(record):
  return {"question": record["question"], "answer": record["answer"][0]}


def _cot(text):
  return Template(text, COT_TARGET)


TEMPLATES = {
    "gsm8k": FlanTemplates(
        templates=(Template("{question}"), Template("Solve this math problem: {question}"),
                   Template("Q: {question}\nA:")),
        cot_templates=(_cot("{question} Let's think step by step."),
                       _cot("Answer the following question step by step.\n{question}"))),
    "esnli": FlanTemplates(
        templates=(Template('Premise: "{premise}"\nHypothesis: "{hypothesis}"\nDoes the premise entail the hypothesis?'),
                   Template('If "{premise}", does it follow that "{hypothesis}"?'),
                   Template("{premise}\n\nBased on that paragraph can we conclude that this sentence is true?\n{hypothesis}")),
        cot_templates=(_cot('Premise: "{premise}"\nHypothesis: "{hypothesis}"\n'
                            "Is the hypothesis entailed by the premise? Let's think step by step."),
                       _cot('Can we conclude from "{premise}" that "{hypothesis}"? Stream of consciousness first.')),
        options_field="options"),
    "creak": FlanTemplates(
        templates=(Template('Is the following sentence factually correct?\n"{sentence}"'),
                   Template("Claim: {sentence}\nIs the claim above correct?")),
        cot_templates=(_cot('Is the following sentence factually correct?\n"{sentence}"\nLet\'s think step by step.'),),
        options_field="options"),
    "nq_open": FlanTemplates(
        templates=(Template("{question}?"), Template("Answer this question: {question}?"),
                   Template("Q: {question}?\nA:"))),
}

CAPS = {"gsm8k": 30_000, "esnli": 30_000, "creak": 30_000, "nq_open": 30_000}


def splits(data_dir):
  nq = read_records(os.path.join(data_dir, "qa", "nq_open", "dev.jsonl"))
  return {
      "gsm8k": ({"train": read_records(os.path.join(data_dir, "gsm8k", "train.jsonl")),
                 "validation": read_records(os.path.join(data_dir, "gsm8k", "test.jsonl"))}, gsm8k_fields),
      "esnli": ({"train": read_records(os.path.join(data_dir, "nli", "esnli", "dev.jsonl")),
                 "validation": read_records(os.path.join(data_dir, "nli", "esnli", "test.jsonl"))}, esnli_fields),
      "creak": ({"train": read_records(os.path.join(data_dir, "classification", "creak", "train.jsonl")),
                 "validation": read_records(os.path.join(data_dir, "classification", "creak", "dev.jsonl"))},
                creak_fields),
      "nq_open": ({"train": nq[:3000], "validation": nq[3000:]}, nq_fields),
  }


def register(data_dir: str):
  vocabulary = sentencepiece_vocabulary(os.path.join(data_dir, "t5_vocab", "spiece.model"))
  for name, (records, to_fields) in splits(data_dir).items():
    register_records_task(f"shared_{name}", records, TEMPLATES[name], vocabulary, to_fields)
  add_mixture("shared_mixture", [(f"shared_{name}", cap) for name, cap in CAPS.items()])
  # The Flan 2022 shape in miniature: weighted submixtures, each capped examples-proportional inside.
  add_mixture("shared_cot", [("shared_gsm8k", 100_000), ("shared_esnli", 100_000), ("shared_creak", 100_000)])
  add_mixture("shared_qa", [("shared_nq_open", 30_000)])
  add_mixture("shared_flan_style", [("shared_cot", 0.6), ("shared_qa", 0.4)])


if shared_data_dir():
  register(shared_data_dir())

"""Real Flan tasks over TFDS datasets, with templates in all four formats where the data allows.

MNLI, RTE, BoolQ, ANLI (r1-r3), SQuAD v1.1, GSM8K and e-SNLI, mixed as Flan 2022 does: capped
examples-proportional submixtures ('flan_tfds_nli_qa' cap 30k, 'flan_tfds_cot' cap 100k) under weights.
TFDS must have prepared the data (`tfds build`, or TFDS_DATA_DIR pointing at it); nothing here downloads.
The vocabulary is T5's SentencePiece model at $FLAN_JAX_VOCAB, else the shared one.
"""

import functools
import re

import seqio
import tensorflow_datasets as tfds

from flan_jax.data import COT_TARGET, FlanTemplates, Template, add_mixture, register_flan_task
from flan_jax.data.paths import t5_vocabulary_path
from flan_jax.data.preprocessors import flatten, to_python
from flan_jax.data.registration import POOL_SIZE
from flan_jax.vocab import sentencepiece_vocabulary

NLI3 = ["yes", "it is not possible to tell", "no"]  # entailment, neutral, contradiction
NLI2 = ["yes", "no"]


def _cot(text):
  return Template(text, COT_TARGET)


NLI_TEMPLATES = (
    Template('Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?'),
    Template('{premise}\n\nBased on the paragraph above can we conclude that "{hypothesis}"?'),
    Template('Sentence 1: {premise}\nSentence 2: {hypothesis}\nIs this second sentence entailed by the first?'),
)
NLI_COT = (_cot('Premise: "{premise}"\nHypothesis: "{hypothesis}"\n'
                "Do we know that the hypothesis entailed by the premise? Let's think step by step."),)


def mnli_fields(ex):
  return {"premise": ex["premise"], "hypothesis": ex["hypothesis"], "options": NLI3, "answer": NLI3[ex["label"]]}


def rte_fields(ex):
  return {"premise": ex["premise"], "hypothesis": ex["hypothesis"], "options": NLI2, "answer": NLI2[ex["label"]]}


def anli_fields(ex):
  fields = {"premise": ex["context"], "hypothesis": ex["hypothesis"], "options": NLI3, "answer": NLI3[ex["label"]]}
  if ex.get("reason"):
    fields["rationale"] = ex["reason"]
  return fields


def boolq_fields(ex):
  return {"passage": ex["passage"], "question": ex["question"], "options": ["no", "yes"],
          "answer": ["no", "yes"][ex["label"]]}


def squad_fields(ex):
  return {"title": ex["title"], "context": ex["context"], "question": ex["question"],
          "answer": ex["answers/text"][0]}


def gsm8k_fields(ex):
  return {"question": ex["question"], "answer": ex["short_answer"].strip().replace(",", ""),
          "rationale": re.sub(r"<<[^>]*>>", "", ex["annotation"]).strip()}


def esnli_fields(ex):
  return {"premise": ex["premise"], "hypothesis": ex["hypothesis"], "options": NLI3, "answer": NLI3[ex["label"]],
          "rationale": ex["explanation_1"].strip()}


# name -> (tfds name, to_fields, templates, pool split)
TASKS = {
    "mnli": ("glue/mnli:2.0.0", mnli_fields, FlanTemplates(NLI_TEMPLATES, options_field="options"), "train"),
    "rte": ("super_glue/rte:1.0.2", rte_fields, FlanTemplates(NLI_TEMPLATES, options_field="options"), "train"),
    "anli_r1": ("anli/r1:0.1.0", anli_fields, FlanTemplates(NLI_TEMPLATES, options_field="options"), "train"),
    "boolq": ("super_glue/boolq:1.0.2", boolq_fields, FlanTemplates((
        Template("{passage}\n\nCan we conclude that {question}?"),
        Template("Read the text and answer the question.\n\n{passage}\n\n{question}?"),
    ), options_field="options"), "train"),
    "squad_v1_1": ("squad/v1.1:3.0.0", squad_fields, FlanTemplates((
        Template("Read this and answer the question\n\n{context}\n\n{question}"),
        Template("{title}\n\n{context}\n\nQ: {question}"),
    )), "train"),
    "gsm8k": ("gsm8k:1.0.0", gsm8k_fields, FlanTemplates(
        (Template("{question}"), Template("Solve this math problem: {question}")),
        cot_templates=(_cot("{question} Let's think step by step."),)), "train"),
    "esnli": ("esnli:0.1.0", esnli_fields, FlanTemplates(
        NLI_TEMPLATES, cot_templates=NLI_COT, options_field="options"), "train"),
}

NLI_QA = ["mnli", "rte", "anli_r1", "boolq", "squad_v1_1"]
COT = ["gsm8k", "esnli"]


def _pool(tfds_name, split, to_fields):
  """First POOL_SIZE training examples, as template fields (read when a dataset is first built)."""
  ds = tfds.load(tfds_name, split=f"{split}[:{POOL_SIZE}]")
  return [to_fields({k: to_python(v) for k, v in flatten(ex).items()}) for ex in tfds.as_numpy(ds)]


def register(vocabulary: seqio.Vocabulary):
  for name, (tfds_name, to_fields, templates, pool_split) in TASKS.items():
    register_flan_task(f"flan_{name}", seqio.TfdsDataSource(tfds_name), templates, to_fields, vocabulary,
                       functools.lru_cache(None)(functools.partial(_pool, tfds_name, pool_split, to_fields)))
  add_mixture("flan_tfds_nli_qa", [(f"flan_{n}", 30_000) for n in NLI_QA])
  add_mixture("flan_tfds_cot", [(f"flan_{n}", 100_000) for n in COT])
  add_mixture("flan_tfds", [("flan_tfds_nli_qa", 0.4 / 0.45), ("flan_tfds_cot", 0.05 / 0.45)])


if t5_vocabulary_path():
  register(sentencepiece_vocabulary(t5_vocabulary_path()))

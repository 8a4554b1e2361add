"""MGSM (Shi et al. 2022), the Flan paper's multilingual math benchmark: 8-shot chain of thought in each
language, with that language's own exemplars, judged by exact match of the final number. Never train on it.

Every `mgsm_<lang>.tsv` (headerless: question, integer answer) under the directory becomes a task mgsm_<lang>
(split 'test'); `exemplars.json` ({lang: [{"q", "a"} x 8]}, each "a" ending with the language's "The answer
is N.") gives its prompt. The question and answer cues and the "The answer is" phrases are read from the
exemplars, so a new language needs no code. Registered from the shared data when it exists; call
`register_mgsm(dir, vocab)` for your own copy.
"""

import csv
import glob
import json
import os
import re

import seqio

from flan_jax.data import Protocol, add_mixture, register_prompt_task
from flan_jax.data.protocol import fitting_length
from flan_jax.data.paths import shared_data_dir
from flan_jax.errors import UserError
from flan_jax.vocab import sentencepiece_vocabulary

# A number as people write it: thousands grouped by one separator ("2,125", "2.125", "2 125"), or plain, with an
# optional decimal part. The grouped form needs exact groups of three, so "5 6" stays two numbers.
NUMBER = re.compile(r"-?\d{1,3}(?:([,.\u00a0\u202f ])\d{3})(?:\1\d{3})*(?!\d)(?:[.,]\d+)?|-?\d+(?:[.,]\d+)?")
CUE = re.compile(r"^(.*?[:：]\s*)")  # "Question: ", "Frage: ", "問題：" ...
SENTENCE_END = re.compile(r"[.!?。।]\s*")
ENGLISH_PHRASE = "The answer is"


def parse_number(text: str) -> float | None:
  """The value of a NUMBER match: group separators dropped, a decimal comma read as a point."""
  match = NUMBER.fullmatch(text.strip())
  if not match:
    return None
  digits = text.strip()
  if match.group(1):  # grouped: whatever follows the groups is the decimal part
    head = re.match(r"-?\d{1,3}(?:[,.\u00a0\u202f ]\d{3})+", digits).group(0)
    digits = re.sub(r"[,.\u00a0\u202f ]", "", head) + digits[len(head):].replace(",", ".")
  else:
    digits = digits.replace(",", ".")
  return float(digits)


def answer_phrases(exemplars) -> list[str]:
  """The words before the final number of each exemplar answer ("The answer is", "Die Antwort lautet", "答えは")."""
  phrases = []
  for ex in exemplars:
    numbers = list(NUMBER.finditer(ex["a"]))
    if not numbers:
      continue
    before = ex["a"][:numbers[-1].start()]
    phrase = SENTENCE_END.split(before)[-1].strip()
    if phrase and phrase not in phrases:
      phrases.append(phrase)
  return phrases


def final_number(text: str, phrases=(ENGLISH_PHRASE,)) -> float | None:
  """The first number after the last answer phrase; without one (a phrase the vocabulary cannot spell decodes
  as ⁇), the last number of the text."""
  lowered = text.lower()
  ends = [lowered.rfind(p.lower()) + len(p) for p in phrases if p and lowered.rfind(p.lower()) >= 0]
  tail = text[max(ends):] if ends else text
  numbers = [m.group(0) for m in NUMBER.finditer(tail)]
  if not numbers:
    return None
  return parse_number(numbers[0] if ends else numbers[-1])


def number_match(phrases):
  """The protocol's match(prediction, target): the decoded numbers compared, never their tokens, so scripts
  the vocabulary lacks cannot turn a right number wrong."""
  phrases = tuple(phrases) + (ENGLISH_PHRASE,)

  def match(prediction: str, target: str) -> bool:
    predicted, gold = final_number(prediction, phrases), parse_number(target)
    return predicted is not None and gold is not None and abs(predicted - gold) < 1e-6

  return match


def mgsm_prompt(exemplars, question: str) -> str:
  """The 8 exemplars (question, then step-by-step answer) and the question with the answer cue, blank-line
  separated, as in the MGSM paper."""
  question_cue = CUE.match(exemplars[0]["q"]).group(1)
  answer_cue = CUE.match(exemplars[0]["a"]).group(1).rstrip()
  shots = [f"{ex['q']}\n{ex['a']}" for ex in exemplars]
  return "\n\n".join(shots + [f"{question_cue}{question}\n{answer_cue}"])


def _read_tsv(path: str) -> list[tuple[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  for i, row in enumerate(rows, start=1):
    if len(row) != 2 or parse_number(row[1]) is None:
      raise UserError(f"{path}:{i}: expected a question and a number separated by a tab")
  return [(q, a) for q, a in rows]


def register_mgsm(directory: str, vocabulary: seqio.Vocabulary, prefix: str = "mgsm") -> list[str]:
  """Tasks <prefix>_<lang> (split 'test') and the mixture <prefix>."""
  files = sorted(glob.glob(os.path.join(directory, "mgsm_*.tsv")))
  if not files:
    raise UserError(f"no MGSM languages in {directory} (expected mgsm_<lang>.tsv)")
  path = os.path.join(directory, "exemplars.json")
  if not os.path.isfile(path):
    raise UserError(f"no MGSM exemplars at {path}")
  with open(path, encoding="utf-8") as f:
    exemplars = json.load(f)
  names = []
  for tsv in files:
    lang = os.path.basename(tsv)[len("mgsm_"):-len(".tsv")]
    shots = exemplars.get(lang)
    if not shots:
      raise UserError(f"MGSM language {lang!r} ({tsv}) has no exemplars in {path} "
                      f"(it has {', '.join(sorted(exemplars))})")
    if any(not CUE.match(ex.get("q", "")) or not CUE.match(ex.get("a", "")) for ex in shots):
      raise UserError(f"{path}: the {lang!r} exemplars need a 'q' and an 'a', each starting with its cue "
                      "(\"Question:\")")
    records = [{"inputs": mgsm_prompt(shots, q), "targets": a} for q, a in _read_tsv(tsv)]
    # Long enough for the longest of the language's exemplar answers, which a model imitates.
    protocol = Protocol(match=number_match(answer_phrases(shots)), split="test",
                        max_decode_length=fitting_length(vocabulary, [ex["a"] for ex in shots]))
    register_prompt_task(f"{prefix}_{lang}", {"test": records}, vocabulary, protocol=protocol)
    names.append(f"{prefix}_{lang}")
  add_mixture(prefix, [(n, None) for n in names], split="test")
  return names


if shared_data_dir() and os.path.isdir(os.path.join(shared_data_dir(), "mgsm")):
  register_mgsm(os.path.join(shared_data_dir(), "mgsm"),
                sentencepiece_vocabulary(os.path.join(shared_data_dir(), "t5_vocab", "spiece.model")))

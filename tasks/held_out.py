"""Held-out evaluation tasks read from directories, each with the protocol of the reference that reproduces
Flan-T5's published numbers: MMLU as hendrycks/test evaluate_flan.py scores it (5-shot from dev, exemplars
dropped from the end while the prompt is over 2,048 tokens, the first decoder step's logits over A/B/C/D, the
test split); MMLU 5-shot chain of thought with the Flan paper authors' prompts (`mmlu-cot.json` beside the CSV
folders, the letter after "The answer is"); BBH with suzgun et al.'s cot-prompts (3-shot, chain of thought or
direct, exact match of the answer after "So the answer is"). Never put these in a training mixture.

One difference from evaluate_flan.py: it reads the CSV files with pandas, which turns a choice written "None"
into "nan" (2 of the 1,380 test questions of the shared subjects); the text here is the file's.

Every `<subject>_test.csv` under an MMLU directory and every `tasks/<name>.json` under a BBH directory
becomes a task: no list of names is hard-coded. Registered from the shared data when it exists; call
`register_mmlu(dir, vocab)` / `register_mmlu_cot(dir, vocab)` / `register_bbh(dir, vocab)` for your own copy.
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

MMLU_CHOICES = ["A", "B", "C", "D"]
MMLU_SHOTS = 5
MMLU_MAX_TOKENS = 2048  # evaluate_flan.py drops exemplars while the prompt (with EOS) is longer


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  for i, row in enumerate(rows, start=1):
    if len(row) != 6:
      raise UserError(f"{path}:{i}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
  return rows


def mmlu_question(row, with_answer: bool) -> str:
  """As in Hendrycks et al.'s evaluate.py: question, lettered choices, 'Answer:' (then ' X\\n\\n')."""
  text = row[0] + "".join(f"\n{letter}. {choice}" for letter, choice in zip(MMLU_CHOICES, row[1:5])) + "\nAnswer:"
  return text + f" {row[5]}\n\n" if with_answer else text


def mmlu_prompt(subject: str, dev_rows, row) -> str:
  # The original's format_subject puts a space before the subject, hence "about  abstract algebra".
  header = f"The following are multiple choice questions (with answers) about  {subject.replace('_', ' ')}.\n\n"
  return header + "".join(mmlu_question(r, True) for r in dev_rows) + mmlu_question(row, False)


def mmlu_fitted_prompt(subject: str, dev_rows, row, vocabulary, max_tokens: int = MMLU_MAX_TOKENS) -> str:
  """The prompt with the first k exemplars, k the largest (at most 5) whose prompt and EOS fit in max_tokens: the
  last exemplars go first, whole, and the question is never cut (a question over the limit alone is cut, and
  counted, by the evaluator)."""
  for k in range(len(dev_rows), -1, -1):
    prompt = mmlu_prompt(subject, dev_rows[:k], row)
    if k == 0 or len(vocabulary.encode(prompt)) + 1 <= max_tokens:
      return prompt


def mmlu_records(directory: str, subject: str, split: str, vocabulary) -> list[dict]:
  dev = _read_csv(os.path.join(directory, "dev", f"{subject}_dev.csv"))[:MMLU_SHOTS]
  rows = _read_csv(os.path.join(directory, split, f"{subject}_{split}.csv"))
  return [{"inputs": mmlu_fitted_prompt(subject, dev, row, vocabulary), "targets": row[5]} for row in rows]


def mmlu_subjects(directory: str) -> list[str]:
  paths = glob.glob(os.path.join(directory, "test", "*_test.csv"))
  return sorted(os.path.basename(p)[:-len("_test.csv")] for p in paths)


MMLU_PROTOCOL = Protocol(scoring="first_token", options=tuple(MMLU_CHOICES), inputs_length=MMLU_MAX_TOKENS,
                         split="test")


def register_mmlu(directory: str, vocabulary: seqio.Vocabulary, metric_fns=(), prefix: str = "mmlu") -> list[str]:
  """Tasks <prefix>_<subject> (splits 'validation' = val, 'test'; evaluated on test) and the mixture <prefix>."""
  subjects = mmlu_subjects(directory)
  if not subjects:
    raise UserError(f"no MMLU subjects in {directory} (expected test/<subject>_test.csv)")
  names = []
  for subject in subjects:
    records = {"validation": mmlu_records(directory, subject, "val", vocabulary),
               "test": mmlu_records(directory, subject, "test", vocabulary)}
    register_prompt_task(f"{prefix}_{subject}", records, vocabulary, metric_fns, protocol=MMLU_PROTOCOL)
    names.append(f"{prefix}_{subject}")
  add_mixture(prefix, [(n, None) for n in names], split="test")
  return names


def mmlu_cot_question(row) -> str:
  """A question in the layout of the CoT prompts' exemplars, ending with the cue their answers start with."""
  choices = " ".join(f"({letter}) {choice}" for letter, choice in zip(MMLU_CHOICES, row[1:5]))
  return f"Q: {row[0]}\n{choices}\nA: Let's think step by step."


def mmlu_cot_prompt(prompt: str, row) -> str:
  # Two of the authors' prompts start with a newline: stripped, so every prompt meets its question the same way.
  return prompt.strip() + "\n\n" + mmlu_cot_question(row)


MMLU_LETTER = re.compile(r"(?i:the answer is)\s*\(?([A-D])\b")  # a capital, so "the answer is a guess" has none


def mmlu_letter(text: str) -> str | None:
  """The letter after the last "The answer is", or the whole answer when it is just a letter ("C", "(C)")."""
  found = MMLU_LETTER.findall(text)
  if found:
    return found[-1]
  bare = text.strip().strip("().").strip()
  return bare if bare in MMLU_CHOICES else None


def mmlu_letter_match(prediction: str, target: str) -> bool:
  letter = mmlu_letter(prediction)
  return letter is not None and letter == mmlu_letter(target)


def register_mmlu_cot(directory: str, vocabulary: seqio.Vocabulary, prefix: str = "mmlu_cot") -> list[str]:
  """Tasks <prefix>_<subject> (splits as register_mmlu) and the mixture <prefix>: 5-shot chain of thought with
  the prompts in <directory>/mmlu-cot.json (subject -> prompt); the answer letter is judged, the target is it."""
  path = os.path.join(directory, "mmlu-cot.json")
  if not os.path.isfile(path):
    raise UserError(f"no MMLU chain-of-thought prompts at {path}")
  with open(path, encoding="utf-8") as f:
    prompts = json.load(f)
  subjects = mmlu_subjects(directory)
  missing = [s for s in subjects if s not in prompts]
  if missing:
    raise UserError(f"{path} has no prompt for MMLU subject(s) {', '.join(missing)}")
  names = []
  # Long enough for the longest answer of the authors' exemplars, which a model imitates.
  answers = [shot.split("\nA: ", 1)[1] for p in prompts.values() for shot in p.strip().split("\n\nQ: ")[1:]
             if "\nA: " in shot]
  protocol = Protocol(match=mmlu_letter_match, chance=100.0 / len(MMLU_CHOICES), split="test",
                      max_decode_length=fitting_length(vocabulary, answers))
  for subject in subjects:
    records = {split: [{"inputs": mmlu_cot_prompt(prompts[subject], row), "targets": row[5]}
                       for row in _read_csv(os.path.join(directory, folder, f"{subject}_{folder}.csv"))]
               for split, folder in (("validation", "val"), ("test", "test"))}
    register_prompt_task(f"{prefix}_{subject}", records, vocabulary, protocol=protocol)
    names.append(f"{prefix}_{subject}")
  add_mixture(prefix, [(n, None) for n in names], split="test")
  return names


def parse_cot_prompt(text: str) -> tuple[str, list[tuple[str, str, str]]]:
  """(task description, [(question, chain of thought, answer)]) of a BBH cot-prompts file."""
  body = text.split("-----\n", 1)[-1].strip()
  description, *shots = body.split("\n\nQ: ")
  parsed = []
  for shot in shots:
    question, answer_text = shot.split("\nA: ", 1)
    match = re.search(r"So the answer is (.*?)\.?\s*$", answer_text, re.S)
    if not match:
      raise UserError(f"BBH prompt shot without 'So the answer is': {question[:60]!r}")
    parsed.append((question, answer_text.strip(), match.group(1).strip()))
  return description.strip(), parsed


def bbh_prompt(description: str, shots, question: str, cot: bool) -> str:
  """3-shot: with the exemplars' chains of thought (cot) or their bare answers (direct)."""
  blocks = [f"Q: {q}\nA: {chain if cot else answer}" for q, chain, answer in shots]
  cue = " Let's think step by step." if cot else ""
  return f"{description}\n\n" + "\n\n".join(blocks) + f"\n\nQ: {question}\nA:{cue}"


def bbh_chance(examples) -> float:
  """Percent right by guessing uniformly: one in the number of listed options ("(A) ..." or "- ..." lines after
  "Options:"); one in two for a task whose answers take two values (True/False); else 0 (free-form answers)."""
  two_valued = len({ex["target"] for ex in examples}) == 2
  chances = []
  for ex in examples:
    listed = ex["input"].split("Options:", 1)[1] if "Options:" in ex["input"] else ""
    n = max(len(set(re.findall(r"\(([A-Z])\)", listed))), len(re.findall(r"^- ", listed, re.M)))
    chances.append(1 / n if n else 0.5 if two_valued else 0.0)
  return 100.0 * sum(chances) / len(chances)


def register_bbh(directory: str, vocabulary: seqio.Vocabulary, metric_fns=(), prefix: str = "bbh") -> list[str]:
  """Tasks <prefix>_<name>_cot and <prefix>_<name>_direct (split 'test'), mixtures <prefix>_cot and _direct."""
  files = sorted(glob.glob(os.path.join(directory, "tasks", "*.json")))
  if not files:
    raise UserError(f"no BBH tasks in {directory} (expected tasks/<name>.json)")
  names = {"cot": [], "direct": []}
  for path in files:
    name = os.path.basename(path)[:-len(".json")]
    prompt_path = os.path.join(directory, "cot-prompts", f"{name}.txt")
    if not os.path.isfile(prompt_path):
      raise UserError(f"BBH task {name} has no prompt file {prompt_path}")
    with open(prompt_path, encoding="utf-8") as f:
      description, shots = parse_cot_prompt(f.read())
    with open(path, encoding="utf-8") as f:
      examples = json.load(f)["examples"]
    for mode in names:
      records = [{"inputs": bbh_prompt(description, shots, ex["input"], mode == "cot"), "targets": ex["target"]}
                 for ex in examples]
      # Long enough for the longest answer of this task's exemplars (chain of thought, or the bare answer).
      answers = [chain if mode == "cot" else answer for _, chain, answer in shots]
      protocol = Protocol(chance=bbh_chance(examples), split="test", max_decode_length=fitting_length(vocabulary, answers))
      register_prompt_task(f"{prefix}_{name}_{mode}", {"test": records}, vocabulary, metric_fns, protocol=protocol)
      names[mode].append(f"{prefix}_{name}_{mode}")
  for mode, task_names in names.items():
    add_mixture(f"{prefix}_{mode}", [(n, None) for n in task_names], split="test")
  return names["cot"] + names["direct"]


if shared_data_dir():
  _vocab = sentencepiece_vocabulary(os.path.join(shared_data_dir(), "t5_vocab", "spiece.model"))
  register_mmlu(os.path.join(shared_data_dir(), "mmlu"), _vocab)
  if os.path.isfile(os.path.join(shared_data_dir(), "mmlu", "mmlu-cot.json")):
    register_mmlu_cot(os.path.join(shared_data_dir(), "mmlu"), _vocab)
  register_bbh(os.path.join(shared_data_dir(), "bbh"), _vocab)

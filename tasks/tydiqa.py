"""TyDi QA GoldP (Clark et al. 2020) as the Flan paper evaluates it: one-shot, direct, exact match after
SQuAD-style normalisation, per language, English left out (the paper's Appendix D.3). Never train on it.

The dev file is the official one (tydiqa-goldp-v1.1-dev.json, SQuAD 1.1 format): {"data": [{"paragraphs":
[{"context", "qas": [{"id": "<language>-...", "question", "answers": [{"text", "answer_start"}]}]}]}]}.
Nothing is downloaded: `register_tydiqa(path, vocab)` registers tydiqa_<lang> (split 'validation') and the
mixture tydiqa from a path the user gives (local or gs://). Each language's first question is its one-shot
exemplar and is not scored. The prompt layout is ours (the paper follows PaLM's protocol without printing it).
"""

import collections
import json
import re
import string

import seqio
from etils import epath

from flan_jax.data import Protocol, add_mixture, register_prompt_task
from flan_jax.data.protocol import fitting_length
from flan_jax.errors import UserError

# The id prefixes of the GoldP languages, as the paper names them.
LANGUAGES = {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id", "japanese": "ja",
             "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te", "thai": "th"}
LEFT_OUT = ("en",)
PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """SQuAD 1.1's normalisation, which TyDi QA GoldP's evaluation uses: lower case, ASCII punctuation and the
  articles a/an/the removed, whitespace collapsed."""
  text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def exact_match(prediction: str, target: str) -> bool:
  """The protocol's match(prediction, target): the target holds every gold answer as a JSON list, and the
  best of them counts (SQuAD's max over ground truths)."""
  return any(normalize_answer(prediction) == normalize_answer(gold) for gold in json.loads(target))


def read_goldp(path: str) -> dict[str, list[dict]]:
  """{language code: [{"context", "question", "answers"}]} in file order; a malformed file is one UserError."""
  try:
    data = json.loads(epath.Path(path).read_text(encoding="utf-8"))["data"]
    by_language = collections.defaultdict(list)
    for article in data:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          prefix = qa["id"].split("-", 1)[0]
          answers = [a["text"] for a in qa["answers"]]
          if not answers:
            raise ValueError(f"question {qa['id']} has no answers")
          by_language[LANGUAGES.get(prefix, prefix)].append(
              {"context": paragraph["context"], "question": qa["question"], "answers": answers})
  except FileNotFoundError as e:
    raise UserError(f"TyDi QA GoldP file not found: {path}") from e
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise UserError(f"{path}: not a TyDi QA GoldP / SQuAD-format file ({type(e).__name__}: {e})") from e
  return dict(by_language)


def qa_block(example: dict, answer: str = "") -> str:
  return f"{example['context']}\n\nQ: {example['question']}\n\nA:{' ' + answer if answer else ''}"


def register_tydiqa(path: str, vocabulary: seqio.Vocabulary, prefix: str = "tydiqa") -> list[str]:
  """Tasks <prefix>_<lang> for every language but English with at least two questions, and the mixture <prefix>."""
  names = []
  for lang, examples in sorted(read_goldp(path).items()):
    if lang in LEFT_OUT or len(examples) < 2:
      continue
    shot, rest = examples[0], examples[1:]
    records = [{"inputs": qa_block(shot, shot["answers"][0]) + "\n\n" + qa_block(ex),
                "targets": json.dumps(ex["answers"], ensure_ascii=False)} for ex in rest]
    # Long enough for every gold answer of the language: the length only bounds decoding.
    protocol = Protocol(match=exact_match, split="validation",
                        max_decode_length=fitting_length(vocabulary, [a for ex in examples for a in ex["answers"]]))
    register_prompt_task(f"{prefix}_{lang}", {"validation": records}, vocabulary, protocol=protocol)
    names.append(f"{prefix}_{lang}")
  if not names:
    raise UserError(f"{path}: no language besides English has two questions (one is the one-shot exemplar)")
  add_mixture(prefix, [(n, None) for n in names], split="validation")
  return names

"""An offline demo mixture: procedurally generated instruction tasks in all four Flan formats.

Nothing is read or downloaded: examples come from a seeded generator, and the vocabulary is UTF-8 bytes.
`demo_mixture` trains on five tasks; `demo_held_out` (which number is smaller) is never trained on.
"""

import numpy as np

from flan_jax.data import COT_TARGET, FlanTemplates, Template, add_mixture, register_records_task
from flan_jax.vocab import byte_vocabulary

SPLIT_SIZES = {"train": 4000, "validation": 200}
WORDS = ["cat", "dog", "sun", "tree", "lamp", "bird", "fish", "rock", "moon", "star", "book", "door"]


def _arithmetic(rng):
  a, b = (int(x) for x in rng.integers(0, 10, 2))
  return {"a": a, "b": b, "answer": str(a + b), "rationale": f"{a} plus {b} makes {a + b}."}


def _sort(rng):
  nums = [int(x) for x in rng.choice(10, size=3, replace=False)]
  ordered = sorted(nums)
  return {"numbers": " ".join(map(str, nums)), "answer": " ".join(map(str, ordered)),
          "rationale": "From smallest to largest: " + ", ".join(map(str, ordered)) + "."}


def _compare(rng, smaller=False):
  a, b = (int(x) for x in rng.choice(10, size=2, replace=False))
  answer = min(a, b) if smaller else max(a, b)
  lo, hi = min(a, b), max(a, b)
  return {"a": a, "b": b, "options": [str(a), str(b)], "answer": str(answer),
          "rationale": f"{hi} is more than {lo}."}


def _reverse(rng):
  word = WORDS[int(rng.integers(len(WORDS)))]
  return {"word": word, "answer": word[::-1],
          "rationale": f"The letters are {', '.join(word)}. Backwards: {', '.join(word[::-1])}."}


def _parity(rng):
  n = int(rng.integers(1, 100))
  even = n % 2 == 0
  return {"n": n, "options": ["yes", "no"], "answer": "yes" if even else "no",
          "rationale": f"{n} ends in {n % 10}, so it is {'even' if even else 'odd'}."}


def _cot(cue):
  return Template(cue + " Let's think step by step.", COT_TARGET)


TASKS = {
    "demo_arithmetic": (_arithmetic, FlanTemplates(
        templates=(Template("What is {a} + {b}?"), Template("Compute {a} plus {b}.")),
        cot_templates=(_cot("What is {a} + {b}?"),), num_shots=2)),
    "demo_sort": (_sort, FlanTemplates(
        templates=(Template("Sort these numbers: {numbers}"), Template("Put in increasing order: {numbers}")),
        cot_templates=(_cot("Sort these numbers: {numbers}."),), num_shots=2)),
    "demo_compare": (_compare, FlanTemplates(
        templates=(Template("Which is larger, {a} or {b}?"), Template("Pick the bigger number: {a}, {b}")),
        cot_templates=(_cot("Which is larger, {a} or {b}?"),), options_field="options", num_shots=2)),
    "demo_reverse": (_reverse, FlanTemplates(
        templates=(Template("Reverse the word: {word}"), Template("Spell {word} backwards.")),
        cot_templates=(_cot("Reverse the word {word}."),), num_shots=2)),
    "demo_parity": (_parity, FlanTemplates(
        templates=(Template("Is {n} even?"), Template("Question: is {n} an even number?")),
        cot_templates=(_cot("Is {n} even?"),), options_field="options", num_shots=2)),
    "demo_held_out": (lambda rng: _compare(rng, smaller=True), FlanTemplates(
        templates=(Template("Which is smaller, {a} or {b}?"),),
        cot_templates=(_cot("Which is smaller, {a} or {b}?"),), options_field="options", num_shots=2)),
}


def generate(task: str, split: str, n: int | None = None) -> list[dict]:
  """Deterministic examples: the same (task, split) always gives the same list."""
  make, _ = TASKS[task]
  seed = [sorted(TASKS).index(task), sorted(SPLIT_SIZES).index(split)]
  rng = np.random.default_rng(seed)
  return [make(rng) for _ in range(n or SPLIT_SIZES[split])]


def register():
  vocabulary = byte_vocabulary()
  for name, (_, templates) in TASKS.items():
    records = {split: generate(name, split) for split in SPLIT_SIZES}
    register_records_task(name, records, templates, vocabulary)
  add_mixture("demo_mixture", [(name, None) for name in TASKS if name != "demo_held_out"])


register()

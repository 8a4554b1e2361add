"""The offline demo: a procedural family of string-rewrite instructions, with thousands of possible tasks.

One task is one rule stated in its instruction ("Replace every c with h.", "Delete every a, then write every d
twice.") applied to a word of random letters. A rule never trained on can only be answered by reading its
instruction, which is what instruction tuning is meant to teach (Zhang, Wang & Charton 2024 use string rewrites
the same way). Nothing is read or downloaded: examples come from seeded generators, the vocabulary is UTF-8
bytes.

- `demo_mixture`: the 1,024 training rules (single steps and two-step compositions) at equal rates, in all four
  Flan formats; `demo_mixture_no_cot`: the same without the chain-of-thought formats. `rule_subset` draws N of
  them for `flan-jax findings`.
- `demo_held_in`: trained rules on words never trained on (a word's hash decides once whether it is a training
  or an evaluation word, for every rule).
- `demo_held_out_rules`: single rules never trained on (unseen letter pairs and letters);
  `demo_held_out_compositions`: two-step compositions never trained on, of operations that were;
  `..._cot` and `..._direct`: the same prompts in chain-of-thought formats only, or without them.
Which rules are held out is fixed by a hash of the rule, so every process and run agrees.
"""

import dataclasses
import functools
import string
import zlib
from collections.abc import Sequence

import gin
import numpy as np

from flan_jax.data import COT_TARGET, FlanTemplates, Template, add_mixture, register_records_task
from flan_jax.errors import UserError
from flan_jax.vocab import byte_vocabulary

LETTERS = string.ascii_lowercase[:10]  # few letters: a rule acts on most texts, and copying is learned sooner
TRAIN_EXAMPLES = 100       # per training rule
EVAL_EXAMPLES = 200        # per evaluation task (held-in and each held-out pool)
NUM_TRAINED = 1024         # training rules: every single rule not held out, then two-step compositions
NUM_HELD_OUT_COMPOSITIONS = 100
TEXT_LENGTHS = (2, 4)      # letters in a text: the tiny model's exact answers fall with length (BENCHMARKS.md)
EVAL_TEXT_SHARE = 8        # one text in 8 (by hash) is kept for evaluation, never trained on


# --- rules ---

@dataclasses.dataclass(frozen=True)
class Step:
  """One operation; `letters` are its parameters (none, one, or a pair)."""
  op: str
  letters: tuple = ()

  @property
  def name(self) -> str:
    return "_".join((self.op,) + self.letters)

  @property
  def phrase(self) -> str:
    x, y = (self.letters + ("", ""))[:2]
    return {"replace": f"replace every {x} with {y}", "delete": f"delete every {x}",
            "double": f"write every {x} twice", "reverse": "reverse the text",
            "rotate": "move the first letter to the end", "upper": "write the text in capital letters",
            "contains": f"does the text contain the letter {x}?",
            "count": f"how many times does the letter {x} appear?"}[self.op]

  def apply(self, text: str) -> str:
    x, y = (self.letters + ("", ""))[:2]
    if self.op in ("replace", "delete", "double"):
      return text.replace(x, {"replace": y, "delete": "", "double": x + x}[self.op])
    if self.op == "contains":
      return "yes" if x in text else "no"
    if self.op == "count":
      return str(text.count(x))
    return {"reverse": text[::-1], "rotate": text[1:] + text[:1], "upper": text.upper()}[self.op]


CLOSED = {"contains": ["yes", "no"], "count": ["0", "1", "2", "3"]}  # operations with a closed answer set
# Compositions are built from the letter-wise rewrites only: their output keeps the input's order, which the
# tiny model learns to copy sooner than a reversed or rotated word (reverse, rotate and upper train as single rules).
REWRITES = ("replace", "delete", "double")


@dataclasses.dataclass(frozen=True)
class Rule:
  steps: tuple

  @property
  def name(self) -> str:
    return "_then_".join(s.name for s in self.steps)

  @functools.cached_property  # asked for every generated example
  def instruction(self) -> str:
    text = ", then ".join(s.phrase for s in self.steps)
    return text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")

  @property
  def options(self):
    return CLOSED.get(self.steps[-1].op)

  def letters(self) -> list:
    """The letters a text needs so that every step changes something (or, for closed answers, may)."""
    return [s.letters[0] for s in self.steps if s.letters and s.op != "contains"]


def _hash(text: str) -> int:
  return zlib.crc32(text.encode())


def single_rules() -> list:
  steps = [Step("replace", (x, y)) for x in LETTERS for y in LETTERS if x != y]
  steps += [Step(op, (x,)) for op in ("delete", "double", "contains", "count") for x in LETTERS]
  steps += [Step(op) for op in ("reverse", "rotate", "upper")]
  return [Rule((s,)) for s in steps]


def is_held_out_single(rule: Rule) -> bool:
  """One parameterized rule in four (unseen letter pairs, unseen letters for an operation); never the few
  rules without letters, which have no unseen variant."""
  return bool(rule.steps[0].letters) and _hash(rule.name) % 4 == 0


@functools.lru_cache(maxsize=None)
def rule_split() -> tuple:
  """(training rules, held-out single rules, held-out compositions), the same on every call and machine."""
  singles = single_rules()
  trained = [r for r in singles if not is_held_out_single(r)]
  held_out = [r for r in singles if is_held_out_single(r)]
  rewrites = [r.steps[0] for r in trained if r.steps[0].op in REWRITES]
  rng = np.random.default_rng(28)
  pairs, seen = [], set()
  num_compositions = NUM_TRAINED - len(trained)
  while len(pairs) < num_compositions + NUM_HELD_OUT_COMPOSITIONS:
    a, b = (rewrites[i] for i in rng.choice(len(rewrites), 2, replace=False))
    undone = a.op in ("replace", "delete") and b.letters[:1] == a.letters[:1]  # b would find no letter to act on
    if a.op == b.op or undone or (a, b) in seen:
      continue  # two steps of one kind read as one
    seen.add((a, b))
    pairs.append(Rule((a, b)))
  return trained + pairs[:num_compositions], held_out, pairs[num_compositions:]


# --- examples ---

def is_eval_text(text: str) -> bool:
  return _hash(text) % EVAL_TEXT_SHARE == 0


class Draws:
  """`Generator.integers(low, high)` one value at a time, in pure Python: numpy's own algorithm (Lemire's, on
  PCG64's 32-bit halves, low half first) over the same bit stream, so the draws, and the data, are numpy's. A
  split is ~10^6 scalar draws, where numpy's per-call overhead was most of the generation time."""

  def __init__(self, rng: np.random.Generator, block: int = 4096):
    self._bits, self._block, self._halves, self._next = rng.bit_generator, block, [], 0

  def _uint32(self) -> int:
    if self._next == len(self._halves):
      raw = self._bits.random_raw(self._block)
      halves = np.empty(2 * self._block, np.uint64)
      halves[0::2], halves[1::2] = raw & 0xFFFFFFFF, raw >> 32
      self._halves, self._next = halves.tolist(), 0
    self._next += 1
    return self._halves[self._next - 1]

  def integers(self, low: int, high: int) -> int:
    """One draw from [low, high), high - low < 2**32."""
    span = high - low
    if span == 1:
      return low  # numpy draws nothing here either
    scaled = self._uint32() * span
    if scaled & 0xFFFFFFFF < span:
      threshold = (0x100000000 - span) % span
      while scaled & 0xFFFFFFFF < threshold:
        scaled = self._uint32() * span
    return low + (scaled >> 32)


def random_text(draws: Draws, needed: list) -> str:
  """A word of random letters holding each needed letter once or twice."""
  length = draws.integers(TEXT_LENGTHS[0], TEXT_LENGTHS[1] + 1)
  word = [LETTERS[draws.integers(0, len(LETTERS))] for _ in range(length)]
  for letter in needed:
    for _ in range(draws.integers(1, 3)):
      word[draws.integers(0, len(word))] = letter
  return "".join(word)


def example(rule: Rule, text: str) -> dict:
  """Template fields: the instruction, the text, each intermediate result (the rationale), the answer."""
  results, current = [], text
  for step in rule.steps:
    current = step.apply(current)
    results.append(current)
  rationale = " ".join(f"Step {i + 1}: {r}." for i, r in enumerate(results))
  fields = {"instruction": rule.instruction, "text": text, "answer": current, "rationale": rationale}
  if rule.options:
    fields["options"] = rule.options
  return fields


def generate(rules: list, split: str, n: int, seed: int) -> list:
  """`n` examples cycling over `rules`; evaluation splits draw only evaluation texts, training splits never."""
  draws = Draws(np.random.default_rng([seed, 0 if split == "train" else 1]))
  out = []
  while len(out) < n:
    rule = rules[len(out) % len(rules)]
    if rule.steps[-1].op == "contains" and draws.integers(0, 2):
      text = random_text(draws, [])  # half the time the letter may be absent
    else:
      text = random_text(draws, rule.letters())
    fields = example(rule, text)
    if is_eval_text(text) == (split == "train") or not fields["answer"].strip():
      continue
    out.append(fields)
  return out


class Examples(Sequence):
  """A split generated on first use: thousands of tasks register in a second, and only the ones read cost."""

  def __init__(self, rules, split, n, seed):
    self._args, self._n = (rules, split, n, seed), n

  @functools.cached_property
  def _records(self):
    return generate(*self._args)

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return self._records[i]


# --- templates and registration ---

def _cot(inputs: str) -> Template:
  return Template(inputs + "\n\nLet's think step by step.", COT_TARGET)


DIRECT = (Template("{instruction}\n\n{text}"), Template("Text: {text}\n\n{instruction}"),
          Template("{instruction} Text: {text}"))
COT = (_cot("{instruction}\n\n{text}"), _cot("Text: {text}\n\n{instruction}"))
# Few-shot exemplars always demonstrate the example's own rule, even in a task that pools many rules.
NUM_SHOTS = 1  # one exemplar: short inputs pack more examples into a step
TEMPLATES = {"all": FlanTemplates(DIRECT, COT, "options", num_shots=NUM_SHOTS, exemplar_field="instruction"),
             "direct": FlanTemplates(DIRECT, (), "options", num_shots=NUM_SHOTS, exemplar_field="instruction"),
             # chain-of-thought prompts only: CoT templates as zero-shot and few-shot (with CoT exemplars)
             "cot": FlanTemplates(COT, (), "options", num_shots=NUM_SHOTS, exemplar_field="instruction")}
MIXTURES = {"demo_mixture": "all", "demo_mixture_no_cot": "direct"}  # all training rules, with or without CoT
EXEMPLARS_PER_RULE = 8
RECORDS = {}  # task name -> {split: the generated records its source serves}


def register_rules(name: str, rules: list, templates: str, splits: dict, seed: int) -> None:
  """One seqio task over `rules` ({split: examples per rule}): examples cycle through the rules, so each rule
  is one task in equal proportion, as examples-proportional mixing of equal-sized tasks would give. seqio builds
  a tf.data pipeline per task, which takes minutes for a thousand tasks: one pipeline serves them all."""
  examples = {split: Examples(rules, split, n * len(rules), seed) for split, n in splits.items()}
  examples.setdefault("train", Examples(rules, "train", EXEMPLARS_PER_RULE * len(rules), seed))
  RECORDS[name] = examples
  register_records_task(name, examples, TEMPLATES[templates], byte_vocabulary(),
                        pool_size=EXEMPLARS_PER_RULE * len(rules))


@gin.register
def rule_subset(mixture: str, num_tasks: int, seed: int) -> str:
  """A mixture of `num_tasks` training rules of `mixture` drawn with `seed` (a seed's draws are nested: its
  4 rules are among its 16), registered under a new name, which is returned. The findings sweep's
  `subset_fn` for the rule family."""
  trained = rule_split()[0]
  if not 1 <= num_tasks <= len(trained):
    raise UserError(f"{mixture} has {len(trained)} training rules; cannot draw {num_tasks}")
  order = np.random.default_rng([seed, _hash(mixture)]).permutation(len(trained))
  name = f"{mixture}_{num_tasks}_rules_seed{seed}"
  register_rules(name + "_task", [trained[i] for i in order[:num_tasks]], MIXTURES[mixture],
                 {"train": TRAIN_EXAMPLES}, seed)
  add_mixture(name, [(name + "_task", None)])
  return name


def register():
  trained, held_out, held_out_compositions = rule_split()
  for mixture, templates in MIXTURES.items():
    register_rules(f"{mixture}_rules", trained, templates, {"train": TRAIN_EXAMPLES}, _hash(mixture))
    add_mixture(mixture, [(f"{mixture}_rules", None)])
  evaluation = {"demo_held_in": trained, "demo_held_out_rules": held_out,
                "demo_held_out_compositions": held_out_compositions}
  for name, rules in evaluation.items():
    order = [rules[i] for i in np.random.default_rng(_hash(name)).permutation(len(rules))][:EVAL_EXAMPLES]
    per_rule = {"validation": max(1, EVAL_EXAMPLES // len(order))}
    register_rules(name, order, "all", per_rule, _hash(name))
    if name == "demo_held_out_compositions":
      for kind in ("cot", "direct"):
        register_rules(f"{name}_{kind}", order, kind, per_rule, _hash(name))


register()

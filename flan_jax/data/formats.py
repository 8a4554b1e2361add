"""Flan formatting in plain Python: templates, options blocks, chain-of-thought and few-shot prompts.

A task gives instruction templates over its fields; each example is rendered in one of four formats
(zero-shot or few-shot, each with or without chain-of-thought), with or without an options block when the
task has options. The choice comes from a seeded numpy generator, so a seed fixes the whole stream.
"""

import dataclasses
import string

import numpy as np

from flan_jax.errors import UserError

INPUT_TARGET_DELIMITER = "\n\n"   # between an exemplar's input and its target
EXEMPLAR_SEPARATOR = "\n\n\n"     # between exemplars, and before the final input
COT_TARGET = "{rationale}\nThe answer is {answer}."
FORMATS = ("zero_shot", "few_shot", "zero_shot_cot", "few_shot_cot")


@dataclasses.dataclass(frozen=True)
class Template:
  """An instruction: `inputs` and `targets` with {field} placeholders."""
  inputs: str
  targets: str = "{answer}"


@dataclasses.dataclass(frozen=True)
class FlanTemplates:
  """How one task is phrased.

  `templates` are plain instructions; `cot_templates` carry a chain-of-thought cue and a target such as
  COT_TARGET built from a `rationale` field (tasks without rationales leave them empty). `options_field` names a list field holding
  the answer choices of a classification task: such examples get an options block half of the time.
  `exemplar_field`, in a task that pools several instructions, names the field an exemplar must share with the
  example, so that few-shot exemplars demonstrate the same instruction.
  """
  templates: tuple
  cot_templates: tuple = ()
  options_field: str | None = None
  num_shots: int = 3
  exemplar_field: str | None = None

  def __post_init__(self):
    if not self.templates:
      raise ValueError("a task needs at least one template")

  def formats(self) -> tuple:
    return FORMATS if self.cot_templates else FORMATS[:2]


def _field_names(text: str) -> list[str]:
  return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def fill(text: str, fields: dict, task: str) -> str:
  """`text` with each {field} replaced; a missing field names the task, the field and the example."""
  values = {}
  for name in _field_names(text):
    if name not in fields:
      shown = {k: v for k, v in fields.items() if not k.startswith("_")}
      raise UserError(f"task {task}: template field '{name}' is missing from example {_short(shown)}")
    value = fields[name]
    values[name] = value if isinstance(value, str) else str(value)
  return text.format_map(values)


def _short(obj, limit=200) -> str:
  text = repr(obj)
  return text if len(text) <= limit else text[:limit] + "...}"


def options_block(options) -> str:
  return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


@dataclasses.dataclass(frozen=True)
class Choice:
  """Which rendering an example gets."""
  format: str
  template_index: int
  with_options: bool


def choose(rng: np.random.Generator, templates: FlanTemplates) -> Choice:
  fmt = templates.formats()[rng.integers(len(templates.formats()))]
  pool = templates.cot_templates if fmt.endswith("cot") else templates.templates
  with_options = templates.options_field is not None and bool(rng.integers(2))
  return Choice(fmt, int(rng.integers(len(pool))), with_options)


def render_single(fields: dict, templates: FlanTemplates, choice: Choice, task: str) -> tuple[str, str]:
  """(inputs, targets) of one example on its own, in `choice`'s template."""
  cot = choice.format.endswith("cot")
  template = (templates.cot_templates if cot else templates.templates)[choice.template_index]
  inputs = fill(template.inputs, fields, task)
  if choice.with_options and fields.get(templates.options_field):  # a task may pool closed and open questions
    inputs += INPUT_TARGET_DELIMITER + options_block(fields[templates.options_field])
  targets = fill(template.targets, fields, task)
  return inputs, targets


def render(fields: dict, templates: FlanTemplates, choice: Choice, exemplars: list, task: str,
           fits=lambda text: True) -> tuple[str, str]:
  """The example in `choice`'s format. Few-shot prepends exemplars rendered with the same template,
  dropping them from the front until `fits(inputs)` holds (or none are left)."""
  inputs, targets = render_single(fields, templates, choice, task)
  if not choice.format.startswith("few_shot"):
    return inputs, targets
  shots = [INPUT_TARGET_DELIMITER.join(render_single(ex, templates, choice, task)) for ex in exemplars]
  while True:
    prompt = EXEMPLAR_SEPARATOR.join(shots + [inputs])
    if not shots or fits(prompt):
      return prompt, targets
    shots = shots[1:]

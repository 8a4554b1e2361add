"""How a benchmark is scored, as its reference scores it. A Protocol travels with its task (register_prompt_task),
so `flan-jax eval --tasks mmlu` is right without flags; a flag that changes a length is shown in the results."""

import dataclasses
from typing import Callable

SCORINGS = ("generation", "rank", "first_token")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """scoring: "generation" decodes and judges the answer with `match`; "rank" scores each option's tokens and
  EOS (seqio's rank classification); "first_token" compares the first decoder step's log-probabilities of each
  option's first token (hendrycks/test evaluate_flan.py, which reproduces Flan-T5's MMLU numbers).

  inputs_length None: as long as the task's longest input, so no prompt is ever cut (few-shot prompts are made
  to fit when they are built). max_decode_length None: the evaluator's default. split None: validation, else
  test, else train. chance: percent right by guessing (with options, one in their number)."""
  scoring: str = "generation"
  options: tuple[str, ...] = ()
  match: Callable[[str, str], bool] | None = None
  chance: float | None = None
  inputs_length: int | None = None
  max_decode_length: int | None = None
  split: str | None = None

  def __post_init__(self):
    if self.scoring not in SCORINGS:
      raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
    if (self.scoring != "generation") != bool(self.options):
      raise ValueError(f"{self.scoring} scoring {'needs' if self.options == () else 'takes no'} options")
    object.__setattr__(self, "options", tuple(self.options))
    if self.chance is None:
      object.__setattr__(self, "chance", 100.0 / len(self.options) if self.options else 0.0)


def fitting_length(vocabulary, texts, multiple: int = 64) -> int:
  """The smallest multiple of `multiple` that holds every text's tokens and EOS: a decode length long enough for
  the longest exemplar answer a model imitates."""
  longest = max(len(vocabulary.encode(text)) + 1 for text in texts)
  return -(-longest // multiple) * multiple

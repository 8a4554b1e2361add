"""The exact text of each Flan format, on fixed examples (pure Python, no tf.data)."""

import numpy as np
import pytest

from flan_jax.data import formats
from flan_jax.data.formats import COT_TARGET, Choice, FlanTemplates, Template
from flan_jax.errors import UserError

TEMPLATES = FlanTemplates(
    templates=(Template("Is {n} even?"), Template("Question: is {n} an even number?")),
    cot_templates=(Template("Is {n} even? Let's think step by step.", COT_TARGET),),
    options_field="options", num_shots=2)
EX = {"n": 14, "options": ["yes", "no"], "answer": "yes", "rationale": "14 ends in 4, so it is even."}
SHOTS = [{"n": 3, "options": ["yes", "no"], "answer": "no", "rationale": "3 ends in 3, so it is odd."},
         {"n": 8, "options": ["yes", "no"], "answer": "yes", "rationale": "8 ends in 8, so it is even."}]


def render(fmt, index=0, options=False, shots=SHOTS, fits=lambda t: True):
  return formats.render(EX, TEMPLATES, Choice(fmt, index, options), shots, "parity", fits)


def test_zero_shot():
  assert render("zero_shot") == ("Is 14 even?", "yes")
  assert render("zero_shot", index=1) == ("Question: is 14 an even number?", "yes")


def test_zero_shot_with_options():
  assert render("zero_shot", options=True) == ("Is 14 even?\n\nOPTIONS:\n- yes\n- no", "yes")


def test_zero_shot_cot():
  assert render("zero_shot_cot") == ("Is 14 even? Let's think step by step.",
                                     "14 ends in 4, so it is even.\nThe answer is yes.")


def test_few_shot():
  assert render("few_shot") == ("Is 3 even?\n\nno\n\n\nIs 8 even?\n\nyes\n\n\nIs 14 even?", "yes")


def test_few_shot_with_options():
  inputs, _ = render("few_shot", options=True)
  assert inputs == ("Is 3 even?\n\nOPTIONS:\n- yes\n- no\n\nno\n\n\n"
                    "Is 8 even?\n\nOPTIONS:\n- yes\n- no\n\nyes\n\n\n"
                    "Is 14 even?\n\nOPTIONS:\n- yes\n- no")


def test_few_shot_cot():
  inputs, targets = render("few_shot_cot")
  assert inputs == ("Is 3 even? Let's think step by step.\n\n3 ends in 3, so it is odd.\nThe answer is no.\n\n\n"
                    "Is 8 even? Let's think step by step.\n\n8 ends in 8, so it is even.\nThe answer is yes.\n\n\n"
                    "Is 14 even? Let's think step by step.")
  assert targets == "14 ends in 4, so it is even.\nThe answer is yes."


def test_few_shot_drops_exemplars_from_the_front_until_it_fits():
  inputs, _ = render("few_shot", fits=lambda t: len(t) <= 40)
  assert inputs == "Is 8 even?\n\nyes\n\n\nIs 14 even?"
  inputs, _ = render("few_shot", fits=lambda t: len(t) <= 5)  # nothing fits: the example alone remains
  assert inputs == "Is 14 even?"


def test_missing_field_names_task_field_and_example():
  with pytest.raises(UserError, match=r"task parity: template field 'n' is missing from example \{'m': 1\}"):
    formats.render({"m": 1}, TEMPLATES, Choice("zero_shot", 0, False), [], "parity")


def test_choices_cover_all_formats_templates_and_options():
  rng = np.random.default_rng(0)
  seen = {(c.format, c.template_index, c.with_options) for c in (formats.choose(rng, TEMPLATES) for _ in range(400))}
  assert {f for f, _, _ in seen} == set(formats.FORMATS)
  assert {(f, i) for f, i, _ in seen} >= {("zero_shot", 0), ("zero_shot", 1), ("few_shot", 0), ("few_shot", 1)}
  assert {o for _, _, o in seen} == {True, False}
  no_cot = FlanTemplates(templates=(Template("{n}"),))
  assert {formats.choose(rng, no_cot).format for _ in range(50)} == {"zero_shot", "few_shot"}

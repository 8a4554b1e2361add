"""The Flan-T5 paper's held-out results and its normalized average, so that a run reads beside the published row
of its size (Chung et al. 2022, "Scaling Instruction-Finetuned Language Models", arXiv:2210.11416v5).

Normalized average (its Section 2.3 and footnote 5, after BIG-bench's "normalized preferred metric"): a task's
score is rescaled so that guessing scores 0 and a perfect answer 100, 100 * (score - chance) / (100 - chance), and
may be negative; a benchmark's normalized score is the mean over its tasks; the normalized average is the
macro-average of six: MMLU-Direct, MMLU-CoT, BBH-Direct, BBH-CoT, TyDiQA-Direct and MGSM-CoT. Chance is 25 for
MMLU (four choices), each BBH task's own (one in its number of options, flan_jax_tasks.held_out.bbh_chance) and
0 for TyDi QA and MGSM (free-form answers). The paper does not print its per-task BBH lower bounds; with ours, its
Appendix D per-task scores give its published averages to within 0.15 (tests/test_eval_suite.py).
"""

BENCHMARKS = ("mmlu_direct", "mmlu_cot", "bbh_direct", "bbh_cot", "tydiqa", "mgsm")

# Table 5, the Flan-T5 rows: MMLU direct / CoT (5-shot, validation set: Appendix D.1), BBH direct / CoT (3-shot,
# mean of 27 subtasks), TyDiQA (1-shot exact match, mean of 8 languages, English left out), MGSM (8-shot CoT, mean
# of 10 languages), and the normalized average.
_COLUMNS = BENCHMARKS + ("normalized_average",)
FLAN_T5 = {size: dict(model=f"Flan-T5-{name}", **dict(zip(_COLUMNS, row))) for size, name, *row in [
    # size    name     MMLU direct, CoT  BBH direct, CoT  TyDiQA  MGSM  norm. avg
    ("small", "Small",  28.7,  12.1,       29.1,  19.2,      1.1,  0.2,  -3.1),
    ("base",  "Base",   35.9,  33.7,       31.3,  27.9,      4.1,  0.4,   6.5),
    ("large", "Large",  45.1,  40.5,       37.5,  31.5,     12.3,  0.7,  13.8),
    ("xl",    "XL",     52.4,  45.5,       41.0,  35.2,     16.6,  1.9,  19.1),
    ("xxl",   "XXL",    55.1,  48.6,       45.3,  41.4,     19.0,  4.9,  23.7),
]}

# The languages the paper averages over (TyDiQA: English left out).
LANGUAGES = {"mgsm": ("bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"),
             "tydiqa": ("ar", "bn", "fi", "id", "ko", "ru", "sw", "te")}

# The released sizes' shapes (T5.1.1; t5x's t5_1_1 gin files): d_model, d_ff, heads, encoder and decoder layers.
SHAPES = {"small": (512, 1024, 6, 8, 8), "base": (768, 2048, 12, 12, 12), "large": (1024, 2816, 16, 24, 24),
          "xl": (2048, 5120, 32, 24, 24), "xxl": (4096, 10240, 64, 24, 24)}


def size_of(config) -> str | None:
  """The Flan-T5 size a T5Config has the shape of, or None (a tiny test model, a custom shape)."""
  shape = (config.d_model, config.d_ff, config.num_heads, config.num_encoder_layers, config.num_decoder_layers)
  return next((size for size, s in SHAPES.items() if s == shape), None)


def normalize(score: float, chance: float) -> float:
  """Percent of the way from guessing (0) to perfect (100); below chance is negative."""
  return 100.0 * (score - chance) / (100.0 - chance)


def normalized_score(tasks) -> float:
  """A benchmark's normalized score from [(score, chance)] of its tasks (scores in percent)."""
  return sum(normalize(score, chance) for score, chance in tasks) / len(tasks)


def normalized_average(benchmarks: dict) -> float:
  """The macro-average of benchmark -> [(score, chance) per task] normalized scores."""
  return sum(normalized_score(tasks) for tasks in benchmarks.values()) / len(benchmarks)

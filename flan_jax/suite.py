"""`flan-jax eval --suite flan`: the Flan paper's held-out suite in one run, reported as its Table 5 columns
beside the published Flan-T5 row of the same size, with the normalized average (flan_jax.paper_results).

Each benchmark is a registered mixture evaluated by flan_jax.evaluation (so the same progress lines, the same
multi-process decoding), each task by its protocol (docs/training.md): MMLU direct (evaluate_flan.py's 5-shot
first-step logits) and CoT (the paper authors' 5-shot prompts,
the letter after "The answer is"), BBH direct and CoT (3-shot), MGSM (8-shot CoT, every language found) and
TyDi QA GoldP (1-shot, from the dev file the user names; without one it is null and the normalized average is
over the other five). Each benchmark runs on its protocol's split: MMLU test, as evaluate_flan.py, the others
their only one.
"""

import numpy as np

from flan_jax import evaluation, inference, paper_results

# Table 5's columns -> the mixture that computes each.
MIXTURES = {"mmlu_direct": "mmlu", "mmlu_cot": "mmlu_cot", "bbh_direct": "bbh_direct", "bbh_cot": "bbh_cot",
            "tydiqa": "tydiqa", "mgsm": "mgsm"}
LABELS = {"mmlu_direct": "MMLU direct", "mmlu_cot": "MMLU CoT", "bbh_direct": "BBH direct", "bbh_cot": "BBH CoT",
          "tydiqa": "TyDiQA", "mgsm": "MGSM", "normalized_average": "Norm. avg"}


def run(model: inference.Model, settings: inference.Settings, max_examples=None, tydiqa: str | None = None,
        log_fn=print) -> dict:
  """Every benchmark's score (percent), its per-task detail, the normalized average and the paper's row."""
  benchmarks = [b for b in paper_results.BENCHMARKS if b != "tydiqa" or tydiqa]
  if tydiqa:
    from flan_jax_tasks.tydiqa import register_tydiqa
    register_tydiqa(tydiqa, model.vocabulary)
  results = {"suite": "flan", "tasks": {}, "benchmarks": {}}
  chances_of = {}  # benchmark -> [(score, chance)] of its tasks
  for i, benchmark in enumerate(benchmarks, start=1):
    log_fn(f"suite {i}/{len(benchmarks)}: {LABELS[benchmark]} ({MIXTURES[benchmark]})")
    out = evaluation.evaluate(model, [MIXTURES[benchmark]], settings, None, max_examples, log_fn=log_fn)
    results["tasks"].update(out["tasks"])
    scores = {task: 100.0 * r["accuracy"] for task, r in out["tasks"].items()}
    chances = chances_of[benchmark] = [(scores[task], out["tasks"][task]["chance"]) for task in scores]
    results["benchmarks"][benchmark] = {"mixture": MIXTURES[benchmark], "score": float(np.mean(list(scores.values()))),
                                        "normalized": paper_results.normalized_score(chances), "tasks": scores}
  for benchmark in paper_results.BENCHMARKS:
    results[benchmark] = results["benchmarks"][benchmark]["score"] if benchmark in benchmarks else None
  results["normalized_average"] = float(paper_results.normalized_average(chances_of))
  results["normalized_average_of"] = benchmarks
  size = paper_results.size_of(model.config)
  results["paper"] = dict(paper_results.FLAN_T5[size]) if size else None
  return results


def table(results: dict) -> str:
  """Table 5's columns: our row, the paper's row of the same size, then the per-language scores."""
  columns = list(paper_results.BENCHMARKS) + ["normalized_average"]
  examples = sorted({r["examples"] for r in results["tasks"].values()})
  ours = f"ours ({examples[0]}-{examples[-1]} examples/task)" if len(examples) > 1 else f"ours ({examples[0]}/task)"
  rows = [(ours, results)] + ([(results["paper"]["model"] + " (paper)", results["paper"])] if results["paper"] else [])
  cell = lambda v: f"{v:>11.1f}" if v is not None else f"{'-':>11}"
  lines = [f"{'':30}" + "".join(f"{LABELS[c]:>11}" for c in columns), "-" * (30 + 11 * len(columns))]
  lines += [f"{name:30}" + "".join(cell(row.get(c)) for c in columns) for name, row in rows]
  for benchmark in ("mgsm", "tydiqa"):
    detail = results["benchmarks"].get(benchmark)
    if detail:
      languages = {t.rsplit("_", 1)[-1]: v for t, v in detail["tasks"].items()}
      missing = sorted(set(paper_results.LANGUAGES[benchmark]) - set(languages))
      lines.append(f"{LABELS[benchmark]} per language: " + ", ".join(f"{k} {v:.1f}" for k, v in languages.items())
                   + (f" (the paper's average also has {', '.join(missing)})" if missing else ""))
  if results["tydiqa"] is None:
    lines.append("TyDiQA: no --tydiqa file given; the normalized average is over the other five benchmarks")
  if not results["paper"]:
    lines.append("no Flan-T5 size has this checkpoint's shape: no paper row to compare with")
  return "\n".join(lines)


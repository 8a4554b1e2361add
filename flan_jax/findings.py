"""`flan-jax findings`: the Flan paper's three findings, measured on any mixture and model size.

Chung et al. 2022 report that held-out tasks improve (a) with more finetuning tasks (Table 3), (b) with larger
models, and (c) that finetuning without chain-of-thought data hurts CoT prompting (Section 4.2). The sweep trains
one model per point with the run's gin settings (the same steps and batch for every point) and evaluates it:

(a) N training tasks drawn from MIXTURE (`subset_fn`, nested per seed), for each N and seed;
(b) the largest N at each model size (`sizes`: name -> T5Config fields over the gin model);
(c) COT_MIXTURE and NO_COT_MIXTURE, each evaluated with CoT prompts and with direct prompts. When COT_MIXTURE is
    MIXTURE, its row is the largest-N point of the first seed (also evaluated on the CoT tasks) rather than a
    second training on the same data.

Each point's result is written as it finishes, so re-running the command skips the points already done.
The table (markdown and JSON) and the plot land in the output directory.
"""

import contextlib
import dataclasses
import json
import os
import time

import gin
import numpy as np
import seqio

from flan_jax import logs
from flan_jax.data import registration
from flan_jax.errors import UserError
from flan_jax.models.t5 import param_count
from flan_jax.settings import DatasetConfig, EvalConfig


@gin.register
def mixture_subset(mixture: str, num_tasks: int, seed: int) -> str:
  """`num_tasks` leaf tasks of a registered mixture, drawn with `seed` (nested: a seed's first 4 tasks are among
  its first 16), as a new mixture with the same rates; returns its name."""
  provider = registration.get_provider(mixture)
  if not isinstance(provider, seqio.Mixture):
    raise UserError(f"{mixture} is a task, not a mixture: the task-count sweep draws tasks from a mixture")
  tasks = sorted(t.name for t in provider.tasks)
  if not 1 <= num_tasks <= len(tasks):
    raise UserError(f"{mixture} has {len(tasks)} tasks; cannot draw {num_tasks}")
  order = np.random.default_rng(seed).permutation(len(tasks))
  name = f"{mixture}_{num_tasks}_tasks_seed{seed}"
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  picked = [tasks[i] for i in order[:num_tasks]]
  seqio.MixtureRegistry.add(name, [(t, provider.get_rate(seqio.get_mixture_or_task(t))) for t in picked])
  return name


def _mean_accuracy(metrics: dict, tasks) -> float | None:
  values = [metrics.get(f"eval/{t}/accuracy") for t in tasks]
  return float(np.mean(values)) if tasks and None not in values else None


@gin.configurable(denylist=["out_dir", "log_fn"])
def sweep(out_dir: str, mixture: str = gin.REQUIRED, held_out_tasks: tuple = gin.REQUIRED,
          held_in_tasks: tuple = (), task_counts: tuple = (1, 4, 16, 64, 256, 1024), seeds: tuple = (0, 1),
          sizes: dict | None = None, subset_fn=mixture_subset, cot_mixture: str | None = None,
          no_cot_mixture: str | None = None, cot_eval_tasks: tuple = (), direct_eval_tasks: tuple = (),
          log_fn=print) -> dict:
  """Runs every point not yet done, then writes findings.json, findings.md and findings.png in `out_dir`."""
  from flan_jax import train  # noqa: PLC0415  (heavy: only when a sweep runs)
  sizes = dict(sizes or {"default": {}})
  if not task_counts or not seeds:
    raise UserError("findings: task_counts and seeds must not be empty")
  if bool(cot_mixture) != bool(no_cot_mixture) or (cot_mixture and not (cot_eval_tasks and direct_eval_tasks)):
    raise UserError("findings: the CoT finding needs cot_mixture, no_cot_mixture, cot_eval_tasks and "
                    "direct_eval_tasks together")
  default_size = next(iter(sizes))
  largest = max(task_counts)
  points = [("tasks", n, seed, default_size) for n in task_counts for seed in seeds]
  points += [("size", largest, seeds[0], size) for size in sizes if size != default_size]
  reuse_largest = cot_mixture == mixture
  cot_kinds = (([] if reuse_largest else ["with_cot"]) + ["without_cot"]) if cot_mixture else []
  points += [("cot", kind, seeds[0], default_size) for kind in cot_kinds]
  eval_tasks = list(dict.fromkeys(list(held_out_tasks) + list(held_in_tasks)))
  largest_key = f"{largest}_tasks_seed{seeds[0]}_{default_size}"

  results = {}
  started = time.time()
  for i, (kind, what, seed, size) in enumerate(points):
    if kind == "cot":
      name = cot_mixture if what == "with_cot" else no_cot_mixture
      tasks = list(cot_eval_tasks) + list(direct_eval_tasks)
      key = f"{what}_seed{seed}_{size}"
    else:
      name, tasks = subset_fn(mixture, what, seed), eval_tasks
      key = f"{what}_tasks_seed{seed}_{size}"
      if reuse_largest and key == largest_key:
        tasks = list(dict.fromkeys(tasks + list(cot_eval_tasks) + list(direct_eval_tasks)))
    path = os.path.join(out_dir, "points", key + ".json")
    if os.path.exists(path):
      with open(path) as f:
        results[key] = json.load(f)
      log_fn(f"findings: point {i + 1}/{len(points)} {key}: done before, kept")
      continue
    log_fn(f"findings: point {i + 1}/{len(points)} {key} ({name}); {logs.duration(time.time() - started)} so far")
    with _model_size(sizes[size]) as config:
      # An eval period past the end: one evaluation, after the last step.
      metrics = train.train(model_dir=os.path.join(out_dir, "runs", key),
                            data=DatasetConfig(mixture_or_task_name=name, seed=seed),
                            evaluation=EvalConfig(tasks=tuple(tasks), period=10 ** 9), log_fn=log_fn)
    params = param_count(config)
    results[key] = {"kind": kind, "what": what, "seed": seed, "size": size, "mixture": name, "parameters": params,
                    "metrics": {k: v for k, v in metrics.items() if k.startswith("eval/")}}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(results[key], f, indent=1)
    os.replace(path + ".tmp", path)
  if reuse_largest:
    results[f"with_cot_seed{seeds[0]}_{default_size}"] = {**results[largest_key], "kind": "cot", "what": "with_cot"}

  table = summarize(results, held_out_tasks, held_in_tasks, cot_eval_tasks, direct_eval_tasks)
  with open(os.path.join(out_dir, "findings.json"), "w") as f:
    json.dump(table, f, indent=1)
  with open(os.path.join(out_dir, "findings.md"), "w") as f:
    f.write(markdown(table) + "\n")
  plot(table, os.path.join(out_dir, "findings.png"))
  log_fn(markdown(table))
  log_fn(f"findings: wrote {out_dir}/findings.md, findings.json and findings.png in "
         f"{logs.duration(time.time() - started)}")
  return table


@contextlib.contextmanager
def _model_size(fields: dict):
  """T5Config's gin bindings changed to `fields` for a block, restored after."""
  from flan_jax.models import T5Config
  defaults = {f.name: f.default for f in dataclasses.fields(T5Config)}

  def current(field):
    try:
      return gin.query_parameter(f"T5Config.{field}")
    except ValueError:
      return defaults[field]

  saved = {field: current(field) for field in fields}
  with gin.unlock_config():
    for field, value in fields.items():
      gin.bind_parameter(f"T5Config.{field}", value)
  try:
    yield T5Config()
  finally:
    with gin.unlock_config():
      for field, value in saved.items():
        gin.bind_parameter(f"T5Config.{field}", value)


def summarize(results: dict, held_out, held_in, cot_eval, direct_eval) -> dict:
  """The three findings as rows: means and spreads over seeds."""
  counts = {}
  for r in results.values():
    if r["kind"] == "tasks":
      counts.setdefault(r["what"], []).append(r)
  task_rows = []
  for n in sorted(counts):
    held_out_acc = [_mean_accuracy(r["metrics"], held_out) for r in counts[n]]
    held_in_acc = [_mean_accuracy(r["metrics"], held_in) for r in counts[n]]
    task_rows.append({"tasks": n, "seeds": [r["seed"] for r in counts[n]], "held_out": held_out_acc,
                      "held_out_mean": float(np.mean(held_out_acc)), "held_out_min": min(held_out_acc),
                      "held_out_max": max(held_out_acc),
                      "held_in_mean": float(np.mean(held_in_acc)) if held_in else None})
  largest = max(counts) if counts else None
  size_rows = []
  first_seed = task_rows[-1]["seeds"][0] if task_rows else None
  for r in results.values():
    if r["kind"] == "size" or (r["kind"] == "tasks" and r["what"] == largest and r["seed"] == first_seed):
      size_rows.append({"size": r["size"], "parameters": r["parameters"], "tasks": r["what"],
                        "held_out": _mean_accuracy(r["metrics"], held_out),
                        "held_in": _mean_accuracy(r["metrics"], held_in) if held_in else None})
  size_rows.sort(key=lambda row: row["parameters"])
  cot_rows = [{"training": r["what"], "cot_prompts": _mean_accuracy(r["metrics"], cot_eval),
               "direct_prompts": _mean_accuracy(r["metrics"], direct_eval)}
              for r in sorted((r for r in results.values() if r["kind"] == "cot"), key=lambda r: r["what"])]
  return {"held_out_tasks": list(held_out), "held_in_tasks": list(held_in), "task_count": task_rows,
          "model_size": size_rows, "chain_of_thought": cot_rows}


def _pct(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"


def markdown(table: dict) -> str:
  lines = [f"Held-out tasks: {', '.join(table['held_out_tasks'])}", "",
           "(a) Held-out accuracy against the number of training tasks (mean over seeds, min-max)", "",
           "| training tasks | seeds | held-out accuracy | min - max | held-in accuracy |", "|---:|---:|---:|---|---:|"]
  for r in table["task_count"]:
    lines.append(f"| {r['tasks']} | {len(r['seeds'])} | {_pct(r['held_out_mean'])} | "
                 f"{_pct(r['held_out_min'])} - {_pct(r['held_out_max'])} | {_pct(r['held_in_mean'])} |")
  lines += ["", "(b) Held-out accuracy against model size", "",
            "| size | parameters | training tasks | held-out accuracy | held-in accuracy |",
            "|---|---:|---:|---:|---:|"]
  for r in table["model_size"]:
    lines.append(f"| {r['size']} | {r['parameters']:,} | {r['tasks']} | {_pct(r['held_out'])} | {_pct(r['held_in'])} |")
  if table["chain_of_thought"]:
    lines += ["", "(c) Chain of thought: multi-step held-out tasks, prompted with and without CoT", "",
              "| finetuned | CoT prompts | direct prompts |", "|---|---:|---:|"]
    for r in table["chain_of_thought"]:
      lines.append(f"| {r['training'].replace('_', ' ')} | {_pct(r['cot_prompts'])} | {_pct(r['direct_prompts'])} |")
  return "\n".join(lines)


def plot(table: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = 2 + bool(table["chain_of_thought"])
  fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
  rows = table["task_count"]
  ax = axes[0]
  x = [r["tasks"] for r in rows]
  mean = np.array([r["held_out_mean"] for r in rows])
  ax.plot(x, 100 * mean, marker="o", label="held-out (mean)")
  ax.fill_between(x, [100 * r["held_out_min"] for r in rows], [100 * r["held_out_max"] for r in rows], alpha=0.25,
                  label="min - max over seeds")
  for r in rows:
    ax.scatter([r["tasks"]] * len(r["held_out"]), [100 * v for v in r["held_out"]], s=10, color="k")
  if rows and rows[0]["held_in_mean"] is not None:
    ax.plot(x, [100 * r["held_in_mean"] for r in rows], marker="s", linestyle="--", label="held-in")
  ax.set_xscale("log", base=2)
  ax.set(xlabel="training tasks", ylabel="accuracy (%)", title="(a) number of tasks", ylim=(0, 100))
  ax.legend()
  ax = axes[1]
  sizes = table["model_size"]
  ax.plot([r["parameters"] for r in sizes], [100 * r["held_out"] for r in sizes], marker="o", label="held-out")
  for r in sizes:
    ax.annotate(r["size"], (r["parameters"], 100 * r["held_out"]))
  ax.set_xscale("log")
  ax.set(xlabel="parameters", ylabel="accuracy (%)", title="(b) model size", ylim=(0, 100))
  if table["chain_of_thought"]:
    ax = axes[2]
    cot = table["chain_of_thought"]
    positions = np.arange(len(cot))
    ax.bar(positions - 0.2, [100 * (r["cot_prompts"] or 0) for r in cot], 0.4, label="CoT prompts")
    ax.bar(positions + 0.2, [100 * (r["direct_prompts"] or 0) for r in cot], 0.4, label="direct prompts")
    ax.set_xticks(positions, [r["training"].replace("_", " ") for r in cot])
    ax.set(ylabel="accuracy (%)", title="(c) chain of thought (multi-step held-out)", ylim=(0, 100))
    ax.legend()
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)

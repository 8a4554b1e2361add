"""Held-out evaluation, standalone (`flan-jax eval`) and during training: per-task accuracy by rank
classification (tasks with fixed options, e.g. MMLU) or by generation (BBH direct and CoT, Flan tasks), averaged
per mixture; a console table and a JSON file.

Generated answers are compared after taking the text after "the answer is" when present, so a chain of
thought is judged by its final answer; a task may register its own judge (MGSM's final number, TyDi QA's
normalised exact match).
"""

import re

import jax
import numpy as np
import seqio

from flan_jax import inference, partitioning, trainer
from flan_jax.data import pipeline, registration
from flan_jax.errors import UserError
from flan_jax.vocab import fingerprint

ANSWER = re.compile(r"the answer is\s*(.*?)\.?\s*$", re.IGNORECASE | re.DOTALL)


def answer_of(text: str) -> str:
  match = ANSWER.search(text)
  return (match.group(1) if match else text).strip()


def same_answer(prediction: str, target: str) -> bool:
  """The default judge of a generated answer; a task may register its own (registration.ANSWER_MATCH)."""
  return answer_of(prediction) == answer_of(target)


def expand(names) -> list[tuple[str, list[str]]]:
  """(group name, its task names) for each task or mixture name."""
  groups = []
  for name in names:
    provider = registration.get_provider(name)
    tasks = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [provider.name]
    groups.append((name, tasks))
  return groups


def examples(task_name: str, split: str | None, max_examples: int | None) -> tuple[str, list[tuple[str, str]]]:
  """(split used, [(inputs, targets)]): the text before tokenization, in a fixed order."""
  task = seqio.get_mixture_or_task(task_name)
  if split is None:
    split = "validation" if "validation" in task.splits else "test" if "test" in task.splits else "train"
  if split not in task.splits:
    raise UserError(f"task {task_name} has no split {split!r}; it has {sorted(task.splits)}")
  ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1, seed=0)
  if max_examples:
    ds = ds.take(max_examples)
  return split, [(ex["inputs_pretokenized"].decode("utf-8"), ex["targets_pretokenized"].decode("utf-8"))
                 for ex in pipeline.iterate(ds)]


def evaluate_task(model: inference.Model, task_name: str, split, settings: inference.Settings,
                  max_examples=None) -> dict:
  task = seqio.get_mixture_or_task(task_name)
  if isinstance(task, seqio.Mixture):
    return _evaluate_mixture(model, task, split, settings, max_examples)
  task_vocab = fingerprint(task.output_features["targets"].vocabulary)
  if model.fingerprint and task_vocab != model.fingerprint:
    raise UserError(f"vocab mismatch: task {task_name} uses {task_vocab}, the checkpoint {model.fingerprint}")
  split, rows = examples(task_name, split, max_examples)
  if not rows:
    raise UserError(f"task {task_name} split {split!r} has no examples")
  inputs, targets = [r[0] for r in rows], [r[1] for r in rows]
  options = registration.RANK_OPTIONS.get(task_name)
  if options:
    scores = inference.score_options(model, inputs, options, settings)
    chosen = [options[int(i)] for i in np.argmax(scores, axis=1)]
    correct = [c == t for c, t in zip(chosen, targets)]
    method, predictions = "rank_classification", chosen
  else:
    predictions = inference.predict(model, inputs, settings)
    match = registration.ANSWER_MATCH.get(task_name, same_answer)
    correct = [bool(match(p, t)) for p, t in zip(predictions, targets)]
    method = "generation"
  # seqio-style metric functions registered with the task: fn(targets, predictions) -> {name: value}.
  metrics = {}
  for fn in task.predict_metric_fns:
    metrics.update({k: float(v) for k, v in fn(targets, predictions).items()})
  return {"accuracy": float(np.mean(correct)), "metrics": metrics, "examples": len(rows), "split": split,
          "method": method, "chance": registration.CHANCE.get(task_name, 0.0), "predictions": predictions}


def _evaluate_mixture(model, mixture: seqio.Mixture, split, settings, max_examples) -> dict:
  """A mixture as one entry (in-training eval names mixtures: EVAL_TASKS = ["mmlu"]): each of its tasks on its
  first `max_examples` examples, the accuracy and chance averaged over the tasks as `evaluate` averages a group."""
  parts = [evaluate_task(model, t.name, split, settings, max_examples) for t in mixture.tasks]
  methods = sorted({p["method"] for p in parts})
  return {"accuracy": float(np.mean([p["accuracy"] for p in parts])), "metrics": {},
          "examples": sum(p["examples"] for p in parts), "split": parts[0]["split"],
          "method": methods[0] if len(methods) == 1 else "mixed",
          "chance": float(np.mean([p["chance"] for p in parts])),
          "predictions": [x for p in parts for x in p["predictions"]]}


def evaluate(model: inference.Model, names, settings: inference.Settings, split=None, max_examples=None,
             log_fn=print) -> dict:
  """{'tasks': {task: metrics}, 'groups': {name: mean accuracy over its tasks}}."""
  results = {"tasks": {}, "groups": {}}
  for group, tasks in expand(names):
    for task in tasks:
      if task not in results["tasks"]:
        results["tasks"][task] = evaluate_task(model, task, split, settings, max_examples)
        r = results["tasks"][task]
        extra = "".join(f", {k} {v:.3f}" for k, v in r["metrics"].items())
        log_fn(f"{task}: accuracy {r['accuracy']:.3f}{extra} on {r['examples']} {r['split']} examples "
               f"({r['method']})")
    results["groups"][group] = float(np.mean([results["tasks"][t]["accuracy"] for t in tasks]))
  return results


def table(results: dict) -> str:
  lines = [f"{'task':52} {'examples':>8} {'accuracy':>9}", "-" * 71]
  for task, r in results["tasks"].items():
    lines.append(f"{task:52} {r['examples']:8d} {100 * r['accuracy']:8.1f}%")
  lines.append("-" * 71)
  for group, accuracy in results["groups"].items():
    lines.append(f"{'average: ' + group:52} {'':8} {100 * accuracy:8.1f}%")
  return "\n".join(lines)


def make_train_evaluator(config, shardings, eval_tasks, split, lengths, batch_size, max_examples, vocabulary,
                         vocab_id: str | None = None):
  """In-training eval: params -> {'eval/<task>/loss', '.../token_accuracy', '.../accuracy'}: teacher-forced loss
  and token accuracy over the split on the training mesh, and the accuracy of decoded answers on its first
  `max_examples` examples."""
  if not eval_tasks:
    return None
  settings = inference.Settings(batch_size=batch_size, inputs_length=lengths["inputs"],
                                max_decode_length=lengths["targets"])
  eval_step = trainer.jit_eval_step(trainer.make_eval_step(config), shardings)
  zero_sums = trainer.zero_eval_sums(shardings)
  vocab_id = vocab_id or fingerprint(vocabulary)  # hashes the SentencePiece model: train has it already
  layout = partitioning.data_layout(shardings.mesh, batch_size)
  local_size = layout.rows
  cached = {}

  def batches(task):
    if task not in cached:  # eval sets are small: read once, pad to the same number of batches on every host
      ds = pipeline.get_dataset(task, split, lengths, shuffle=False, num_epochs=1, pack=False,
                                shard_info=layout.shard_info, seed=0)
      rows = list(pipeline.iterate(ds))
      count = -(-len(rows) // local_size)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        count = int(np.max(multihost_utils.process_allgather(np.array(count))))
      # All-padding rows (zero loss weight) fill the last batch, and every batch of a shard with no examples.
      blank = {k: np.zeros(spec.shape, spec.dtype.as_numpy_dtype) for k, spec in ds.element_spec.items()}
      padded = rows + [blank] * (count * local_size - len(rows))
      cached[task] = [{k: np.stack([r[k] for r in padded[i:i + local_size]]) for k in blank}
                      for i in range(0, len(padded), local_size)]
    return cached[task]

  def evaluate(params):
    out = {}
    model = inference.Model(config, params, vocabulary, vocab_id, shardings.mesh)
    for task in eval_tasks:
      sums = zero_sums
      for local in batches(task):
        sums = eval_step(params, partitioning.global_batch(local, shardings.mesh, layout), sums)
      summary = trainer.summarize(sums)
      out[f"eval/{task}/loss"] = float(summary["loss"])
      out[f"eval/{task}/token_accuracy"] = float(summary["accuracy"])
      if max_examples:  # what inference would answer: generation, or rank classification for option tasks
        result = evaluate_task(model, task, split, settings, max_examples)
        out[f"eval/{task}/accuracy"] = result["accuracy"]
        out.update({f"eval/{task}/{k}": v for k, v in result["metrics"].items()})
    accuracies = [v for k, v in out.items() if k.endswith("/accuracy") and not k.endswith("token_accuracy")]
    if accuracies:
      out["eval/average/accuracy"] = float(np.mean(accuracies))  # a natural best_metric
    return out

  return evaluate

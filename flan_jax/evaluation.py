"""Held-out evaluation, standalone (`flan-jax eval`) and during training: per-task accuracy as the task's
protocol scores it (flan_jax.data.protocol: MMLU by the first decoder step's logits over its letters, options
tasks by rank classification, the rest by generation), averaged per mixture; a console table and a JSON file.
Every input cut and every answer stopped by a length is counted per task, in the results and the progress line.

Generated answers are compared after taking the text after "the answer is" when present, so a chain of
thought is judged by its final answer; a protocol may bring its own judge (MGSM's final number, TyDi QA's
normalised exact match).
"""

import dataclasses
import re

import jax
import numpy as np
import seqio

from flan_jax import inference, partitioning, trainer
from flan_jax.data import pipeline, registration
from flan_jax.data.protocol import Protocol
from flan_jax.errors import UserError
from flan_jax.vocab import fingerprint

ANSWER = re.compile(r"the answer is\s*(.*?)\.?\s*$", re.IGNORECASE | re.DOTALL)


def answer_of(text: str) -> str:
  match = ANSWER.search(text)
  return (match.group(1) if match else text).strip()


def same_answer(prediction: str, target: str) -> bool:
  """The default judge of a generated answer; a task's protocol may bring its own."""
  return answer_of(prediction) == answer_of(target)


def expand(names) -> list[tuple[str, list[str]]]:
  """(group name, its task names) for each task or mixture name."""
  groups = []
  for name in names:
    provider = registration.get_provider(name)
    tasks = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [provider.name]
    groups.append((name, tasks))
  return groups


def protocol_of(task_name: str) -> Protocol:
  return registration.PROTOCOLS.get(task_name) or Protocol()


def examples(task_name: str, split: str | None, max_examples: int | None) -> tuple[str, list[tuple[str, str]]]:
  """(split used, [(inputs, targets)]): the text before tokenization, in a fixed order. Split None: the
  task's protocol's, else validation, else test, else train."""
  task = seqio.get_mixture_or_task(task_name)
  split = split or protocol_of(task_name).split
  if split is None:
    split = "validation" if "validation" in task.splits else "test" if "test" in task.splits else "train"
  if split not in task.splits:
    raise UserError(f"task {task_name} has no split {split!r}; it has {sorted(task.splits)}")
  ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1, seed=0)
  if max_examples:
    ds = ds.take(max_examples)
  return split, [(ex["inputs_pretokenized"].decode("utf-8"), ex["targets_pretokenized"].decode("utf-8"))
                 for ex in pipeline.iterate(ds)]


def task_settings(protocol: Protocol, settings: inference.Settings) -> tuple[inference.Settings, dict]:
  """The settings a task runs with: the protocol's lengths where the caller set none; and each length the
  caller changed, {name: {"protocol": value, "used": value}}, for the results (a decode length only where the
  task decodes; a protocol's None: the longest input, or the default decode length)."""
  used, overrides = {}, {}
  names = ("inputs_length", "max_decode_length") if protocol.scoring == "generation" else ("inputs_length",)
  for name in names:
    ours, theirs = getattr(protocol, name), getattr(settings, name)
    used[name] = theirs or ours
    if theirs and theirs != ours:
      overrides[name] = {"protocol": ours, "used": theirs}
  return dataclasses.replace(settings, **used), overrides


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
  protocol = protocol_of(task_name)
  settings, overrides = task_settings(protocol, settings)
  if protocol.scoring == "generation":
    out = inference.predict(model, inputs, settings)
    predictions = out.values
    match = protocol.match or same_answer
    correct = [bool(match(p, t)) for p, t in zip(predictions, targets)]
  else:
    options = list(protocol.options)
    out = inference.score_options(model, inputs, options, settings, first_token=protocol.scoring == "first_token")
    predictions = [options[int(np.argmax(s))] for s in out.values]
    correct = [c == t for c, t in zip(predictions, targets)]
  # seqio-style metric functions registered with the task: fn(targets, predictions) -> {name: value}.
  metrics = {}
  for fn in task.predict_metric_fns:
    metrics.update({k: float(v) for k, v in fn(targets, predictions).items()})
  return {"accuracy": float(np.mean(correct)), "metrics": metrics, "examples": len(rows), "split": split,
          "method": protocol.scoring, "chance": protocol.chance, "predictions": predictions,
          "inputs_length": settings.inputs_length, "max_decode_length": settings.max_decode_length,
          "overrides": overrides, "inputs_cut": int(out.inputs_cut.sum()), "answers_cut": int(out.answers_cut.sum())}


def _evaluate_mixture(model, mixture: seqio.Mixture, split, settings, max_examples) -> dict:
  """A mixture as one entry (in-training eval names mixtures: EVAL_TASKS = ["mmlu"]): each of its tasks on its
  first `max_examples` examples, the accuracy and chance averaged over the tasks as `evaluate` averages a group."""
  parts = [evaluate_task(model, t.name, split, settings, max_examples) for t in mixture.tasks]
  methods = sorted({p["method"] for p in parts})
  return {"accuracy": float(np.mean([p["accuracy"] for p in parts])), "metrics": {},
          "examples": sum(p["examples"] for p in parts), "split": parts[0]["split"],
          "method": methods[0] if len(methods) == 1 else "mixed",
          "chance": float(np.mean([p["chance"] for p in parts])),
          "predictions": [x for p in parts for x in p["predictions"]],
          "inputs_cut": sum(p["inputs_cut"] for p in parts), "answers_cut": sum(p["answers_cut"] for p in parts)}


def cuts_line(result: dict) -> str:
  """What did not fit, for the task's progress line ("" when everything fit)."""
  cuts = []
  if result["inputs_cut"]:
    cuts.append(f"{result['inputs_cut']} inputs longer than {result.get('inputs_length')} tokens cut to their start")
  if result["answers_cut"]:
    cuts.append(f"{result['answers_cut']} answers stopped at {result.get('max_decode_length')} tokens")
  return f"; NOT FIT: {', '.join(cuts)}" if cuts else ""


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
        changed = "".join(f", {k} {v['used']} (protocol: {v['protocol']})" for k, v in r["overrides"].items())
        log_fn(f"{task}: accuracy {r['accuracy']:.3f}{extra} on {r['examples']} {r['split']} examples "
               f"({r['method']}{changed}){cuts_line(r)}")
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
                         vocab_id: str | None = None, log_fn=print):
  """In-training eval: params -> {'eval/<task>/loss', '.../token_accuracy', '.../accuracy'}: teacher-forced loss
  and token accuracy over the split on the training mesh, and the accuracy of decoded answers on its first
  `max_examples` examples. Both see the inputs as training does (cut to `lengths`); what did not fit is printed
  once per task and reported as '.../inputs_cut' and '.../answers_cut'."""
  if not eval_tasks:
    return None
  settings = inference.Settings(batch_size=batch_size, inputs_length=lengths["inputs"],
                                max_decode_length=lengths["targets"])
  eval_step = trainer.jit_eval_step(trainer.make_eval_step(config), shardings)
  zero_sums = trainer.zero_eval_sums(shardings)
  vocab_id = vocab_id or fingerprint(vocabulary)  # hashes the SentencePiece model: train has it already
  layout = partitioning.data_layout(shardings.mesh, batch_size)
  local_size = layout.rows
  cached, reported = {}, set()

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
      _report_cuts(task)
    return cached[task]

  def _report_cuts(task):
    """The loss sees every example of the split, cut as training cuts it: say once how many did not fit."""
    for name in [t for _, tasks in expand([task]) for t in tasks]:
      _, rows = examples(name, split, None)
      inputs_cut = inference.tokenize(vocabulary, [r[0] for r in rows], lengths["inputs"])[1].sum()
      targets_cut = inference.tokenize(vocabulary, [r[1] for r in rows], lengths["targets"])[1].sum()
      if inputs_cut or targets_cut:
        log_fn(f"eval {name} ({split}): of {len(rows)} examples, {inputs_cut} inputs longer than "
               f"{lengths['inputs']} tokens and {targets_cut} targets longer than {lengths['targets']} are cut to "
               "their start, as in training")

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
      if max_examples:  # what inference would answer, as the task's protocol scores it
        result = evaluate_task(model, task, split, settings, max_examples)
        out[f"eval/{task}/accuracy"] = result["accuracy"]
        out.update({f"eval/{task}/{k}": v for k, v in result["metrics"].items()})
        out[f"eval/{task}/inputs_cut"] = result["inputs_cut"]
        out[f"eval/{task}/answers_cut"] = result["answers_cut"]
        if task not in reported and (result["inputs_cut"] or result["answers_cut"]):
          reported.add(task)
          log_fn(f"eval {task}: accuracy on {result['examples']} examples{cuts_line(result)}")
    accuracies = [v for k, v in out.items() if k.endswith("/accuracy") and not k.endswith("token_accuracy")]
    if accuracies:
      out["eval/average/accuracy"] = float(np.mean(accuracies))  # a natural best_metric
    return out

  return evaluate

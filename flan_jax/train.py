"""`flan-jax train`: gin-configured Flan finetuning on a ('data', 'model') mesh that resumes exactly.

Gin names follow t5x run configs (MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS,
BATCH_SIZE, LEARNING_RATE, INITIAL_CHECKPOINT_PATH, EVAL_PERIOD, RANDOM_SEED, ...; see gin/runs/finetune.gin).

MODEL_DIR holds `checkpoints/` (the last few steps, with optimizer state and data position), `best/` (the best
step by the held-out metric), TensorBoard event files, `train_log.jsonl` and `loss_curve.png`. Re-running the
same command resumes from the last complete checkpoint and continues the same data stream.
"""

import dataclasses
import math
import os
import time

import gin
import jax
import numpy as np

from flan_jax import checkpoints, evaluation, logs, partitioning, preemption, t5x, trainer
from flan_jax.data import pipeline, registration
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.models.config import LORA_FIELDS, RUNTIME_ONLY_FIELDS
from flan_jax.optim import adafactor
from flan_jax.vocab import check_fits, fingerprint


class TrainingDiverged(UserError):
  """The loss became NaN or Inf."""


# Set by gin even over a checkpoint's config: dropout, dtype and remat; and LoRA, which trains on a base.
RUNTIME_FIELDS = RUNTIME_ONLY_FIELDS + LORA_FIELDS
ARCHITECTURE_FIELDS = [f.name for f in dataclasses.fields(T5Config) if f.name not in RUNTIME_FIELDS]


def resolve_model_config(checkpoint_config: T5Config | None) -> T5Config:
  """The gin T5Config, or the checkpoint's architecture with gin's runtime fields (dropout, dtype, remat).

  A checkpoint needs no size gin file; a size gin file that disagrees with it is refused, naming the fields.
  """
  gin_config = T5Config()
  if checkpoint_config is None:
    return gin_config
  bound = {k for k in gin.get_bindings("T5Config") if k in ARCHITECTURE_FIELDS}
  diff = [d for d in gin_config.architecture_diff(checkpoint_config) if d.split(":")[0] in bound]
  if diff:
    raise UserError("the gin model config differs from the checkpoint's: " + "; ".join(diff))
  return dataclasses.replace(checkpoint_config, **{k: getattr(gin_config, k) for k in RUNTIME_FIELDS})


def _check_settings(s: dict) -> None:
  """Bad settings end the run with one line before anything is read or written."""
  def need(ok, message):
    if not ok:
      raise UserError(message)

  def integer(name, low):
    value = s[name]
    need(isinstance(value, int) and not isinstance(value, bool) and value >= low,
         f"train.{name} must be an integer >= {low}, got {value!r}")

  need(isinstance(s["model_dir"], str) and s["model_dir"], f"MODEL_DIR must be a path, got {s['model_dir']!r}")
  need("://" in s["model_dir"] or not os.path.isfile(s["model_dir"]),
       f"MODEL_DIR {s['model_dir']} is an existing file, not a directory")
  integer("train_steps", 0)
  integer("batch_size", 1)
  integer("num_microbatches", 1)
  integer("checkpoint_period", 1)
  integer("keep_checkpoints", 1)
  integer("eval_period", 0)
  integer("eval_batch_size", 1)
  integer("eval_max_examples", 0)
  lengths = s["task_feature_lengths"]
  need(isinstance(lengths, dict) and set(lengths) >= {"inputs", "targets"} and
       all(isinstance(v, int) and v > 0 for v in lengths.values()),
       f"TASK_FEATURE_LENGTHS must map 'inputs' and 'targets' to positive integers, got {lengths!r}")
  need(s["z_loss"] >= 0, f"train.z_loss must be >= 0, got {s['z_loss']}")
  need(s["loss_normalizing_factor"] is None or s["loss_normalizing_factor"] > 0,
       f"LOSS_NORMALIZING_FACTOR must be None or > 0, got {s['loss_normalizing_factor']}")
  need(s["log_period_seconds"] >= 0, f"train.log_period_seconds must be >= 0, got {s['log_period_seconds']}")
  need(s["preemption_deadline_seconds"] > 0,
       f"train.preemption_deadline_seconds must be > 0, got {s['preemption_deadline_seconds']}")
  need(s["best_mode"] in ("max", "min"), f"train.best_mode must be 'max' or 'min', got {s['best_mode']!r}")
  need(not s["best_metric"] or (s["eval_tasks"] and s["eval_period"]),
       "train.best_metric needs EVAL_TASKS and an EVAL_PERIOD > 0")
  path = s["initial_checkpoint_path"]
  need(not path or "://" in path or os.path.exists(path), f"INITIAL_CHECKPOINT_PATH {path} does not exist")


def _initial_meta(path: str):
  """(root, step, meta) of INITIAL_CHECKPOINT_PATH: a flan-jax checkpoint, or a T5X one (config from shapes)."""
  if t5x.is_t5x_checkpoint(path):
    return path, 0, {"model_config": t5x.infer_config(t5x.read_tree(path)["target"]).to_dict()}
  return checkpoints.read_meta(path)


def _existing_checkpoint(directory: str):
  try:
    return checkpoints.read_meta(directory)
  except UserError:
    return None


@gin.configurable
def train(model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          mixture_or_task_module: str | None = None, task_feature_lengths: dict = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED, random_seed: int = 0,
          initial_checkpoint_path: str | None = None, pack: bool = True, shuffle: bool = True,
          z_loss: float = 1e-4,
          loss_normalizing_factor: float | None = None, num_microbatches: int = 1,
          checkpoint_period: int = 1000, keep_checkpoints: int = 3, eval_period: int = 0,
          eval_tasks: tuple = (), eval_split: str = "validation", eval_batch_size: int = 32,
          eval_max_examples: int = 100,
          best_metric: str | None = None, best_mode: str = "max", log_period_seconds: float = 5.0,
          preemption_deadline_seconds: float = 120.0, log_fn=print) -> dict:
  """Train; returns the last logged metrics (and the last eval, if any).

  On SIGTERM, saves the step every process agrees on and raises preemption.Preempted (flan_jax/preemption.py);
  a second SIGTERM or `preemption_deadline_seconds` after the first ends the process without a new save."""
  started = time.time()
  _check_settings(locals())
  # First, so that every process of a run meets a mesh that cannot be laid out at the same point, before the
  # task modules (their import takes each process its own time) are read.
  mesh = partitioning.make_mesh()
  registration.import_task_modules([mixture_or_task_module])
  provider = registration.get_provider(mixture_or_task_name)
  vocabulary = provider.output_features["targets"].vocabulary
  for task in eval_tasks:
    registration.get_provider(task)

  ckpt_dir = os.path.join(model_dir, "checkpoints")
  resume = _existing_checkpoint(ckpt_dir)
  if resume and resume[1] >= train_steps:  # a launcher's rerun of a finished run: no restore, no compilation
    log_fn(f"nothing to do: {ckpt_dir} already holds step {resume[1]} of TRAIN_STEPS={train_steps}")
    return {}
  initial = _initial_meta(initial_checkpoint_path) if initial_checkpoint_path and not resume else None
  source_meta = (resume or initial or (None, None, None))[2]
  config = resolve_model_config(checkpoints.model_config(source_meta) if source_meta else None)
  if resume:
    diff = config.architecture_diff(checkpoints.model_config(resume[2]))
    if diff:
      raise UserError(f"{ckpt_dir} holds a checkpoint of a different model: {'; '.join(diff)}")
  lora_base = (resume[2].get("lora_base") if resume else initial_checkpoint_path) if config.lora_rank else None
  if config.lora_rank and not lora_base:
    raise UserError("LoRA trains adapters on a pretrained base: set INITIAL_CHECKPOINT_PATH")
  check_fits(vocabulary, config.vocab_size)
  vocab_id = fingerprint(vocabulary)
  if source_meta and source_meta.get("vocabulary_fingerprint") not in (None, vocab_id):
    raise UserError(f"vocab mismatch: the checkpoint was trained with {source_meta['vocabulary_fingerprint']}, "
                    f"{mixture_or_task_name} uses {vocab_id}")

  layout = partitioning.data_layout(mesh, batch_size)
  if batch_size % (num_microbatches * mesh.shape["data"]):
    raise UserError(f"BATCH_SIZE={batch_size} must split into {num_microbatches} microbatches of a multiple of "
                    f"the data-parallel size {mesh.shape['data']}")
  tx = adafactor()
  shardings = trainer.Shardings(config, tx, mesh)
  rng = jax.random.key(random_seed)
  init_rng, dropout_key = jax.random.split(rng)

  watch = preemption.Watch(preemption_deadline_seconds, resume[1] if resume else 0, log_fn)
  with jax.set_mesh(mesh), partitioning.axis_rules(), watch:
    frozen = None
    if config.lora_rank:  # the frozen base of the adapters
      frozen = t5x.restore_params(lora_base, shardings.frozen_target())
    if resume:
      root, step, _ = resume
      abstract_params, abstract_opt = shardings.restore_targets()
      params, opt_state, _, step = checkpoints.restore(os.path.join(root, str(step)), abstract_params, abstract_opt)
      state = trainer.init_state(config, tx, shardings, init_rng, params, opt_state, step, frozen)
      log_fn(f"resumed from {root}/{step}")
      _warn_if_data_changed(resume[2], mixture_or_task_name, task_feature_lengths, batch_size, random_seed, log_fn)
    elif initial and not config.lora_rank:
      params = t5x.restore_params(initial_checkpoint_path, shardings.restore_targets()[0])
      state = trainer.init_state(config, tx, shardings, init_rng, params)
      log_fn(f"initialised from {initial_checkpoint_path}")
    else:
      state = trainer.init_state(config, tx, shardings, init_rng, frozen=frozen)
      if frozen is not None:
        log_fn(f"LoRA rank {config.lora_rank} on {', '.join(config.lora_targets)} over the frozen base {lora_base}")
    start_step = int(state.step)
    log_fn(f"mesh data={mesh.shape['data']} model={mesh.shape['model']} over {mesh.size} of "
           f"{jax.device_count()} devices; {sum(x.size for x in jax.tree.leaves(shardings.abstract_params)):,} "
           f"parameters; data shard {layout.shard_index} of {layout.num_shards}, {layout.rows} rows a step "
           f"from this process; sharding: " + ", ".join(
               f"{'/'.join(path)} {_get(state.full_params(), path).sharding.spec}" for path in SHOWN_PARAMS
               if _get(state.full_params(), path) is not None))

    meta = {"model_config": config.to_dict(), "vocabulary": _vocab_path(vocabulary),
            "vocabulary_fingerprint": vocab_id, **({"lora_base": checkpoints.absolute(lora_base)} if lora_base else {}),
            "data": {"mixture_or_task_name": mixture_or_task_name, "task_feature_lengths": dict(task_feature_lengths),
                     "batch_size": batch_size, "random_seed": random_seed, "pack": pack, "shuffle": shuffle,
                     "shards": [layout.shard_index, layout.num_shards], "processes": jax.process_count()}}
    ds = pipeline.get_dataset(mixture_or_task_name, "train", task_feature_lengths, seed=random_seed, pack=pack,
                              shuffle=shuffle, shard_info=layout.shard_info, batch_size=layout.rows)
    iterator = _input_at(ds, start_step, resume, meta["data"], log_fn)
    batches = pipeline.iterate(iterator)

    step_fn = trainer.jit_train_step(
        trainer.make_train_step(config, tx, z_loss, loss_normalizing_factor, num_microbatches), shardings)
    eval_fn = evaluation.make_train_evaluator(config, shardings, eval_tasks, eval_split, task_feature_lengths,
                                              eval_batch_size, eval_max_examples, vocabulary)
    last_mngr = checkpoints.manager(ckpt_dir, max_to_keep=keep_checkpoints, async_save=True)
    best_mngr = checkpoints.manager(os.path.join(model_dir, "best"), max_to_keep=1, best_metric=best_metric,
                                    best_mode=best_mode, async_save=True) if best_metric else None
    writer = logs.MetricWriter(model_dir, start_step)
    progress = logs.Progress(start_step, train_steps, log_period_seconds, log_fn)
    last, last_eval = {}, {}
    pending = []  # (step, tokens, metrics still on the device): fetched when a line, an eval or a save is due

    def check_pending():
      """Fetch the pending steps' metrics (this waits for the device), stop at the first non-finite one, log."""
      nonlocal last
      fetched = jax.device_get([m for _, _, m in pending])
      for i, ((done, tokens, _), metrics) in enumerate(zip(pending, fetched)):
        metrics = {k: float(v) for k, v in metrics.items()}
        problem = (f"loss is {metrics['loss']}" if not math.isfinite(metrics["loss"]) else
                   "the update made the parameters NaN or Inf" if not metrics.pop("params_finite") else None)
        if problem:
          last_mngr.wait_until_finished()
          raise TrainingDiverged(f"{problem} at step {done}; training stopped, the last good checkpoint is "
                                 f"kept ({_latest(last_mngr)})")
        logged = progress.update(done, metrics, tokens, log=i == len(pending) - 1)
        if logged:
          last = logged
          writer.write(done, {f"train/{k}": v for k, v in logged.items()})
      pending.clear()

    try:
      for step in range(start_step, train_steps):
        try:
          local = next(batches)  # read while the previous step still runs on the device
        except StopIteration:
          raise UserError(f"{mixture_or_task_name} ran out of data at step {step}") from None
        tokens = int(np.count_nonzero(local["encoder_input_tokens"]) + np.count_nonzero(local["decoder_target_tokens"]))
        state, metrics = step_fn(state, partitioning.global_batch(local, mesh, layout), dropout_key)
        done = step + 1
        pending.append((done, tokens * layout.num_shards, metrics))
        # Every process stops at the same step: the eval is skipped, the save is waited for.
        preempted = watch.reached(done) and done < train_steps
        evaluate_now = bool(eval_fn and eval_period and (done % eval_period == 0 or done == train_steps)) and \
            not preempted
        save_now = done % checkpoint_period == 0 or done == train_steps or preempted
        if evaluate_now or save_now or progress.due(done):
          check_pending()
        if evaluate_now:
          eval_started = time.time()
          evaluated = eval_fn(state.full_params())
          progress.exclude(time.time() - eval_started)
          writer.write(done, evaluated)
          log_fn(logs.format_metrics(done, evaluated))
          if best_mngr is not None:
            if best_metric not in evaluated:
              raise UserError(f"best_metric {best_metric!r} is not among the eval metrics {sorted(evaluated)}")
            checkpoints.save(best_mngr, done, state.params, meta, metrics=evaluated, wait=False)
          last, last_eval = {**last, **evaluated}, evaluated
        if save_now:
          step_meta = {**meta, "data": {**meta["data"], "batches_consumed": done}}
          checkpoints.save(last_mngr, done, state.params, step_meta, opt_state=state.opt_state, wait=preempted,
                           data_iterator=iterator)
        if preempted:
          raise preemption.Preempted(f"preempted: step {done} saved in {ckpt_dir}, "
                                     f"{time.time() - watch.started_at:.1f}s after the notice; run the same command "
                                     f"again to resume")
    finally:
      writer.close()
      last_mngr.close()  # waits for a save still being written
      if best_mngr is not None:
        best_mngr.close()
    if jax.process_index() == 0:
      curve = logs.plot_loss_curve(model_dir)
      for line in _summary(model_dir, start_step, train_steps, time.time() - started, progress.last_metrics,
                           last_eval, curve, best_mngr is not None):
        log_fn(line)
  return {**progress.last_metrics, **last}


def _summary(model_dir, start_step, train_steps, seconds, metrics, evaluated, curve, has_best) -> list[str]:
  """What the run did, where its output is, and what to run next."""
  ckpt = os.path.join(model_dir, "checkpoints")
  lines = ["", f"done: steps {start_step} -> {train_steps} in {logs.duration(seconds)}" +
           (f", final train loss {metrics['loss']:.4f}" if "loss" in metrics else "")]
  tasks = sorted(k.split("/")[1] for k in evaluated if k.endswith("/loss"))
  if tasks:
    lines.append(f"eval at step {train_steps}:")
    lines.append(f"  {'task':40} {'loss':>8} {'token acc':>10} {'accuracy':>9}")
    for task in tasks:
      get = lambda name: evaluated.get(f"eval/{task}/{name}")
      accuracy = get("accuracy")
      lines.append(f"  {task:40} {get('loss'):8.4f} {100 * get('token_accuracy'):9.1f}% " +
                   (f"{100 * accuracy:8.1f}%" if accuracy is not None else f"{'-':>9}"))
    if "eval/average/accuracy" in evaluated:
      lines.append(f"  {'average':40} {'':8} {'':10} {100 * evaluated['eval/average/accuracy']:8.1f}%")
    groups = {"held-in average": [t for t in tasks if "held_out" not in t],
              "held-out average (never trained on)": [t for t in tasks if "held_out" in t]}
    if all(groups.values()):  # task names with `held_out` in them are the ones never trained on
      for label, names in groups.items():
        values = [evaluated.get(f"eval/{t}/accuracy") for t in names]
        if None not in values:
          lines.append(f"  {label:40} {'':8} {'':10} {100 * np.mean(values):8.1f}%")
  lines += [f"checkpoints:       {ckpt}" + (f"  (best: {os.path.join(model_dir, 'best')})" if has_best else ""),
            f"TensorBoard:       tensorboard --logdir {model_dir}",
            f"log:               {os.path.join(model_dir, logs.LOG_FILE)}"]
  if curve:
    lines.append(f"loss curve:        {curve}")
  lines += ["next:",
            f"  flan-jax infer --checkpoint {ckpt} --task {tasks[0] if tasks else 'TASK'} --output predictions.jsonl",
            f"  flan-jax eval --checkpoint {ckpt} --tasks {' '.join(tasks) if tasks else 'TASK_OR_MIXTURE ...'}",
            f"  flan-jax export-hf --checkpoint {ckpt} --out exported/"]
  return lines


SHOWN_PARAMS = [("decoder", "logits_dense", "kernel"), ("encoder", "layers_0", "mlp", "wi_0", "kernel")]


def _get(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _latest(mngr) -> str:
  step = mngr.latest_step()
  return f"step {step}" if step is not None else "none saved yet"


def _vocab_path(vocabulary) -> str | None:
  return getattr(vocabulary, "sentencepiece_model_file", None)


def _input_at(ds, start_step: int, resume, data: dict, log_fn):
  """The dataset's iterator at the position `start_step` batches in: restored from the checkpoint when it was
  written with the same data settings and layout (constant time), else by reading and dropping the batches.
  One iterator only: each new iterator of a dataset that reshuffles draws a different order."""
  if not start_step:
    return iter(ds)
  root, step, meta = resume
  path = os.path.join(root, str(step))
  saved = {k: v for k, v in meta.get("data", {}).items() if k != "batches_consumed"}
  if saved == data and checkpoints.has_data_iterator(path):
    iterator = iter(ds)
    checkpoints.restore_data_iterator(path, iterator)
    log_fn(f"restored the input position at step {start_step}")
    return iterator
  log_fn(f"re-reading {start_step} batches to reach the input position (the checkpoint has no iterator saved "
         f"with these data settings and processes)")
  return iter(ds.skip(start_step))


def _warn_if_data_changed(meta, name, lengths, batch_size, seed, log_fn):
  saved = meta.get("data", {})
  now = {"mixture_or_task_name": name, "task_feature_lengths": dict(lengths), "batch_size": batch_size,
         "random_seed": seed}
  changed = [f"{k}: {saved.get(k)} -> {v}" for k, v in now.items() if k in saved and saved[k] != v]
  if changed:
    log_fn("WARNING: data settings changed since the checkpoint, so the resumed data stream is not the "
           "original one: " + "; ".join(changed))

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

from flan_jax import checkpoints, logs, partitioning, preemption, t5x, trainer
from flan_jax import evaluation as evaluation_lib
from flan_jax.data import pipeline, registration
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.models.config import LORA_FIELDS, RUNTIME_ONLY_FIELDS
from flan_jax.optim import adafactor
from flan_jax.settings import CheckpointConfig, DatasetConfig, EvalConfig, StepConfig, check_integer
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


def _check_run(model_dir, train_steps: int, log_period_seconds: float) -> None:
  """train()'s own arguments: one line before anything is read or written."""
  if not (isinstance(model_dir, str) and model_dir):
    raise UserError(f"MODEL_DIR must be a path, got {model_dir!r}")
  if "://" not in model_dir and os.path.isfile(model_dir):
    raise UserError(f"MODEL_DIR {model_dir} is an existing file, not a directory")
  check_integer(train_steps, "TRAIN_STEPS", 0)
  if not log_period_seconds >= 0:
    raise UserError(f"train.log_period_seconds must be >= 0, got {log_period_seconds}")


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


def _load_tasks(data: DatasetConfig, evaluation: EvalConfig):
  """Registers the tasks (importing `data.module` first); returns the training data's vocabulary."""
  registration.import_task_modules([data.module])
  provider = registration.get_provider(data.mixture_or_task_name)
  for task in evaluation.tasks:
    registration.get_provider(task)
  return provider.output_features["targets"].vocabulary


@dataclasses.dataclass
class Start:
  """Where a run starts: the model, and the checkpoint it resumes (`resume`: root, step, meta) or is initialised
  from (`initial_path`), if any; `lora_base` is the frozen base of LoRA adapters."""
  config: T5Config
  resume: tuple | None
  initial_path: str | None
  lora_base: str | None
  vocab_id: str


def _starting_point(resume, initial_path: str | None, data: DatasetConfig, vocabulary) -> Start:
  """The model config from the checkpoint the run resumes or starts from (else gin), checked against it."""
  initial = _initial_meta(initial_path) if initial_path and not resume else None
  source_meta = (resume or initial or (None, None, None))[2]
  config = resolve_model_config(checkpoints.model_config(source_meta) if source_meta else None)
  if resume:
    diff = config.architecture_diff(checkpoints.model_config(resume[2]))
    if diff:
      raise UserError(f"{resume[0]} holds a checkpoint of a different model: {'; '.join(diff)}")
  lora_base = (resume[2].get("lora_base") if resume else initial_path) if config.lora_rank else None
  if config.lora_rank and not lora_base:
    raise UserError("LoRA trains adapters on a pretrained base: set INITIAL_CHECKPOINT_PATH")
  check_fits(vocabulary, config.vocab_size)
  vocab_id = fingerprint(vocabulary)
  if source_meta and source_meta.get("vocabulary_fingerprint") not in (None, vocab_id):
    raise UserError(f"vocab mismatch: the checkpoint was trained with {source_meta['vocabulary_fingerprint']}, "
                    f"{data.mixture_or_task_name} uses {vocab_id}")
  return Start(config, resume, initial_path if initial else None, lora_base, vocab_id)


def _restore_or_initialise(start: Start, tx, shardings, rng, data: DatasetConfig, log_fn) -> trainer.TrainState:
  """The state to train from: the resumed checkpoint's, the initial checkpoint's parameters, or new ones."""
  config = start.config
  frozen = t5x.restore_params(start.lora_base, shardings.frozen_target()) if config.lora_rank else None
  if start.resume:
    root, step, meta = start.resume
    abstract_params, abstract_opt = shardings.restore_targets()
    params, opt_state, _, step = checkpoints.restore(os.path.join(root, str(step)), abstract_params, abstract_opt)
    log_fn(f"resumed from {root}/{step}")
    _warn_if_data_changed(meta, data, log_fn)
    return trainer.init_state(config, tx, shardings, rng, params, opt_state, step, frozen)
  if start.initial_path and not config.lora_rank:
    params = t5x.restore_params(start.initial_path, shardings.restore_targets()[0])
    log_fn(f"initialised from {start.initial_path}")
    return trainer.init_state(config, tx, shardings, rng, params)
  if frozen is not None:
    log_fn(f"LoRA rank {config.lora_rank} on {', '.join(config.lora_targets)} over the frozen base {start.lora_base}")
  return trainer.init_state(config, tx, shardings, rng, frozen=frozen)


@gin.configurable
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED, data: DatasetConfig | None = None,
          step: StepConfig | None = None, evaluation: EvalConfig | None = None,
          checkpoint: CheckpointConfig | None = None, log_period_seconds: float = 5.0, log_fn=print) -> dict:
  """Train; returns the last logged metrics (and the last eval, if any).

  Args:
    model_dir: where checkpoints/, best/, the logs and the loss curve go (local or gs://); a rerun resumes there.
    train_steps: the step to stop at; a resumed run goes on to it, a finished one does nothing.
    data, step, evaluation, checkpoint: the settings (flan_jax/settings.py); each left None is built from gin.
    log_period_seconds: seconds between progress lines.
    log_fn: where progress lines go.

  On SIGTERM, saves the step every process agrees on and raises preemption.Preempted (flan_jax/preemption.py);
  a second SIGTERM or `preemption_deadline_seconds` after the first ends the process without a new save."""
  started = time.time()
  _check_run(model_dir, train_steps, log_period_seconds)
  data, step = data or DatasetConfig(), step or StepConfig()
  evaluation, checkpoint = evaluation or EvalConfig(), checkpoint or CheckpointConfig()
  if data.mixture_or_task_name is None:
    raise UserError("MIXTURE_OR_TASK_NAME is not set (--gin.MIXTURE_OR_TASK_NAME='...')")
  # First, so that every process of a run meets a mesh that cannot be laid out at the same point, before the
  # task modules (their import takes each process its own time) are read.
  mesh = partitioning.make_mesh()
  vocabulary = _load_tasks(data, evaluation)
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  resume = _existing_checkpoint(ckpt_dir)
  if resume and resume[1] >= train_steps:  # a launcher's rerun of a finished run: no restore, no compilation
    log_fn(f"nothing to do: {ckpt_dir} already holds step {resume[1]} of TRAIN_STEPS={train_steps}")
    return {}
  start = _starting_point(resume, checkpoint.initial_checkpoint_path, data, vocabulary)
  layout = partitioning.data_layout(mesh, data.batch_size)
  if data.batch_size % (step.num_microbatches * mesh.shape["data"]):
    raise UserError(f"BATCH_SIZE={data.batch_size} must split into {step.num_microbatches} microbatches of a "
                    f"multiple of the data-parallel size {mesh.shape['data']}")
  tx = adafactor()
  shardings = trainer.Shardings(start.config, tx, mesh)
  init_rng, dropout_key = jax.random.split(jax.random.key(data.seed))
  watch = preemption.Watch(checkpoint.preemption_deadline_seconds, resume[1] if resume else 0, log_fn)
  with jax.set_mesh(mesh), partitioning.axis_rules(), watch:
    state = _restore_or_initialise(start, tx, shardings, init_rng, data, log_fn)
    log_fn(_layout_line(mesh, shardings, layout, state))
    meta = _meta(start, vocabulary, data, layout)
    loop = Loop(model_dir, train_steps, int(state.step), evaluation, checkpoint, meta, watch, log_period_seconds,
                log_fn)
    ds = pipeline.get_dataset(data.mixture_or_task_name, "train", data.task_feature_lengths, seed=data.seed,
                              pack=data.pack, shuffle=data.shuffle, shard_info=layout.shard_info,
                              batch_size=layout.rows)
    iterator = _input_at(ds, loop.start_step, resume, meta["data"], log_fn)
    step_fn = trainer.jit_train_step(trainer.make_train_step(
        start.config, tx, step.z_loss, step.loss_normalizing_factor, step.num_microbatches), shardings)
    eval_fn = evaluation_lib.make_train_evaluator(
        start.config, shardings, evaluation.tasks, evaluation.split, data.task_feature_lengths,
        evaluation.batch_size, evaluation.max_examples, vocabulary, start.vocab_id, log_fn)
    loop.run(state, step_fn, eval_fn, iterator, layout, mesh, dropout_key, data.mixture_or_task_name)
  if jax.process_index() == 0:
    for line in loop.summary(time.time() - started):
      log_fn(line)
  return {**loop.progress.last_metrics, **loop.last}


def _layout_line(mesh, shardings, layout, state) -> str:
  params = state.full_params()
  return (f"mesh data={mesh.shape['data']} model={mesh.shape['model']} over {mesh.size} of {jax.device_count()} "
          f"devices; {sum(x.size for x in jax.tree.leaves(shardings.abstract_params)):,} parameters; data shard "
          f"{layout.shard_index} of {layout.num_shards}, {layout.rows} rows a step from this process; sharding: " +
          ", ".join(f"{'/'.join(path)} {_get(params, path).sharding.spec}" for path in SHOWN_PARAMS
                    if _get(params, path) is not None))


def _meta(start: Start, vocabulary, data: DatasetConfig, layout) -> dict:
  """What each checkpoint records beside the arrays: the model, the vocabulary and the data stream's settings."""
  return {"model_config": start.config.to_dict(), "vocabulary": _vocab_path(vocabulary),
          "vocabulary_fingerprint": start.vocab_id,
          **({"lora_base": checkpoints.absolute(start.lora_base)} if start.lora_base else {}),
          "data": {"mixture_or_task_name": data.mixture_or_task_name,
                   "task_feature_lengths": dict(data.task_feature_lengths), "batch_size": data.batch_size,
                   "random_seed": data.seed, "pack": data.pack, "shuffle": data.shuffle,
                   "shards": [layout.shard_index, layout.num_shards], "processes": jax.process_count()}}


class Loop:
  """The steps from `start_step` to `train_steps`, each followed by maybe_log, maybe_evaluate and maybe_save.

  A step's metrics stay on the device (`pending`) until a line, an eval or a save is due, so that reading the next
  batch overlaps the step. On preemption every process stops at the same step: the eval is skipped and the save is
  waited for."""

  def __init__(self, model_dir, train_steps, start_step, evaluation: EvalConfig, checkpoint: CheckpointConfig,
               meta, watch, log_period_seconds, log_fn):
    self.model_dir, self.train_steps, self.start_step = model_dir, train_steps, start_step
    self.evaluation, self.checkpoint, self.meta, self.watch, self.log_fn = evaluation, checkpoint, meta, watch, log_fn
    self.ckpt_dir = os.path.join(model_dir, "checkpoints")
    self.progress = logs.Progress(start_step, train_steps, log_period_seconds, log_fn)
    self.pending = []  # (step, tokens, metrics still on the device)
    self.last, self.last_eval = {}, {}

  def run(self, state, step_fn, eval_fn, iterator, layout, mesh, dropout_key, data_name):
    self.last_mngr = checkpoints.manager(self.ckpt_dir, max_to_keep=self.checkpoint.keep, async_save=True)
    best_metric = self.evaluation.best_metric
    self.best_mngr = checkpoints.manager(os.path.join(self.model_dir, "best"), max_to_keep=1, async_save=True,
                                         best_metric=best_metric, best_mode=self.evaluation.best_mode) \
        if best_metric else None
    self.writer = logs.MetricWriter(self.model_dir, self.start_step)
    batches = pipeline.iterate(iterator)
    try:
      for step in range(self.start_step, self.train_steps):
        try:
          local = next(batches)  # read while the previous step still runs on the device
        except StopIteration:
          raise UserError(f"{data_name} ran out of data at step {step}") from None
        tokens = int(np.count_nonzero(local["encoder_input_tokens"]) +
                     np.count_nonzero(local["decoder_target_tokens"]))
        state, metrics = step_fn(state, partitioning.global_batch(local, mesh, layout), dropout_key)
        done = step + 1
        self.pending.append((done, tokens * layout.num_shards, metrics))
        preempted = self.watch.reached(done) and done < self.train_steps
        evaluate_now = bool(eval_fn) and self._eval_due(done) and not preempted
        save_now = done % self.checkpoint.period == 0 or done == self.train_steps or preempted
        self.maybe_log(done, force=evaluate_now or save_now)
        if evaluate_now:
          self.evaluate(done, state, eval_fn)
        if save_now:
          self.save(done, state, iterator, wait=preempted)
        if preempted:
          raise preemption.Preempted(f"preempted: step {done} saved in {self.ckpt_dir}, "
                                     f"{time.time() - self.watch.started_at:.1f}s after the notice; run the same "
                                     f"command again to resume")
    finally:
      self.writer.close()
      self.last_mngr.close()  # waits for a save still being written
      if self.best_mngr is not None:
        self.best_mngr.close()

  def _eval_due(self, done: int) -> bool:
    period = self.evaluation.period
    return bool(period) and (done % period == 0 or done == self.train_steps)

  def maybe_log(self, done: int, force: bool) -> None:
    """Fetch the pending steps' metrics when due (this waits for the device), stop at the first non-finite one."""
    if not (force or self.progress.due(done)):
      return
    fetched = jax.device_get([m for _, _, m in self.pending])
    for i, ((step, tokens, _), metrics) in enumerate(zip(self.pending, fetched)):
      metrics = {k: float(v) for k, v in metrics.items()}
      problem = (f"loss is {metrics['loss']}" if not math.isfinite(metrics["loss"]) else
                 "the update made the parameters NaN or Inf" if not metrics.pop("params_finite") else None)
      if problem:
        self.last_mngr.wait_until_finished()
        raise TrainingDiverged(f"{problem} at step {step}; training stopped, the last good checkpoint is kept "
                               f"({_latest(self.last_mngr)})")
      logged = self.progress.update(step, metrics, tokens, log=i == len(self.pending) - 1)
      if logged:
        self.last = logged
        self.writer.write(step, {f"train/{k}": v for k, v in logged.items()})
    self.pending.clear()

  def evaluate(self, done: int, state, eval_fn) -> None:
    eval_started = time.time()
    evaluated = eval_fn(state.full_params())
    self.progress.exclude(time.time() - eval_started)
    self.writer.write(done, evaluated)
    self.log_fn(logs.format_metrics(done, evaluated))
    if self.best_mngr is not None:
      if self.evaluation.best_metric not in evaluated:
        raise UserError(f"best_metric {self.evaluation.best_metric!r} is not among the eval metrics "
                        f"{sorted(evaluated)}")
      checkpoints.save(self.best_mngr, done, state.params, self.meta, metrics=evaluated, wait=False)
    self.last, self.last_eval = {**self.last, **evaluated}, evaluated

  def save(self, done: int, state, iterator, wait: bool) -> None:
    step_meta = {**self.meta, "data": {**self.meta["data"], "batches_consumed": done}}
    checkpoints.save(self.last_mngr, done, state.params, step_meta, opt_state=state.opt_state, wait=wait,
                     data_iterator=iterator)

  def summary(self, seconds: float) -> list[str]:
    curve = logs.plot_loss_curve(self.model_dir)
    return _summary(self.model_dir, self.start_step, self.train_steps, seconds, self.progress.last_metrics,
                    self.last_eval, curve, self.best_mngr is not None)


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


def _warn_if_data_changed(meta, data: DatasetConfig, log_fn):
  saved = meta.get("data", {})
  now = {"mixture_or_task_name": data.mixture_or_task_name, "task_feature_lengths": dict(data.task_feature_lengths),
         "batch_size": data.batch_size, "random_seed": data.seed}
  changed = [f"{k}: {saved.get(k)} -> {v}" for k, v in now.items() if k in saved and saved[k] != v]
  if changed:
    log_fn("WARNING: data settings changed since the checkpoint, so the resumed data stream is not the "
           "original one: " + "; ".join(changed))

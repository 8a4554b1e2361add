"""train()'s settings, grouped as t5x groups them (its DatasetConfig, SaveCheckpointConfig): what data, what the
compiled step does, what is evaluated, what is saved. Each is gin-configurable and checks itself when built, so a
bad value ends the run with one line before anything is read or written; `plan` builds the same objects, so it
compiles the step train would run.

Gin binds their fields (`DatasetConfig.batch_size = %BATCH_SIZE`, `CheckpointConfig.period = 1000`); train() and
plan build each with no arguments and gin fills it in.
"""

import dataclasses
import os

import gin

from flan_jax.errors import UserError


def _need(ok: bool, message: str) -> None:
  if not ok:
    raise UserError(message)


def check_integer(value, label: str, low: int) -> None:
  """An int (not a bool) >= low, else one line naming the setting."""
  _need(isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{label} must be an integer >= {low}, got {value!r}")


def _integer(owner, name: str, low: int) -> None:
  check_integer(getattr(owner, name), f"{type(owner).__name__}.{name}", low)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """The training data. `seed` also draws the initial parameters and the dropout masks.
  `mixture_or_task_name` may be unset (None) where no data is read, as in `plan`."""
  mixture_or_task_name: str | None = None
  task_feature_lengths: dict = dataclasses.field(default_factory=lambda: {"inputs": 2048, "targets": 512})
  batch_size: int = 64
  seed: int = 0
  pack: bool = True
  shuffle: bool = True
  module: str | None = None  # imported first: a module that registers the task (MIXTURE_OR_TASK_MODULE)

  def __post_init__(self):
    if self.mixture_or_task_name is gin.REQUIRED:  # `MIXTURE_OR_TASK_NAME = %gin.REQUIRED`, still unbound
      object.__setattr__(self, "mixture_or_task_name", None)
    _need(self.mixture_or_task_name is None or (isinstance(self.mixture_or_task_name, str) and
                                                self.mixture_or_task_name),
          f"MIXTURE_OR_TASK_NAME must be a task or mixture name, got {self.mixture_or_task_name!r}")
    lengths = self.task_feature_lengths
    _need(isinstance(lengths, dict) and set(lengths) >= {"inputs", "targets"} and
          all(isinstance(v, int) and v > 0 for v in lengths.values()),
          f"TASK_FEATURE_LENGTHS must map 'inputs' and 'targets' to positive integers, got {lengths!r}")
    _integer(self, "batch_size", 1)
    _integer(self, "seed", 0)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the compiled train step computes: the loss's z-loss and normalizer, and how many microbatches a batch is
  accumulated over (the same update in less activation memory)."""
  num_microbatches: int = 1
  z_loss: float = 1e-4
  loss_normalizing_factor: float | None = None

  def __post_init__(self):
    _integer(self, "num_microbatches", 1)
    _need(self.z_loss >= 0, f"StepConfig.z_loss must be >= 0, got {self.z_loss}")
    _need(self.loss_normalizing_factor is None or self.loss_normalizing_factor > 0,
          f"LOSS_NORMALIZING_FACTOR must be None or > 0, got {self.loss_normalizing_factor}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The in-training evaluation: `tasks` every `period` steps and at the end (period 0: never), at most
  `max_examples` examples each (0: all); with `best_metric`, MODEL_DIR/best keeps the best step's parameters."""
  tasks: tuple = ()
  period: int = 0
  split: str = "validation"
  batch_size: int = 32
  max_examples: int = 100
  best_metric: str | None = None
  best_mode: str = "max"

  def __post_init__(self):
    object.__setattr__(self, "tasks", tuple(self.tasks))
    _integer(self, "period", 0)
    _integer(self, "batch_size", 1)
    _integer(self, "max_examples", 0)
    _need(self.best_mode in ("max", "min"), f"EvalConfig.best_mode must be 'max' or 'min', got {self.best_mode!r}")
    _need(not self.best_metric or (self.tasks and self.period),
          "EvalConfig.best_metric needs EVAL_TASKS and an EVAL_PERIOD > 0")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Where the run starts from (INITIAL_CHECKPOINT_PATH: a flan-jax or T5X checkpoint), how often it saves and how
  many steps it keeps; on SIGTERM, how long the agreed step's save may take before the process ends without it."""
  initial_checkpoint_path: str | None = None
  period: int = 1000
  keep: int = 3
  preemption_deadline_seconds: float = 120.0

  def __post_init__(self):
    path = self.initial_checkpoint_path
    _need(not path or "://" in path or os.path.exists(path), f"INITIAL_CHECKPOINT_PATH {path} does not exist")
    _integer(self, "period", 1)
    _integer(self, "keep", 1)
    _need(self.preemption_deadline_seconds > 0,
          f"CheckpointConfig.preemption_deadline_seconds must be > 0, got {self.preemption_deadline_seconds}")

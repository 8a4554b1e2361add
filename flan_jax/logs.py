"""Training output: a console line every few seconds, TensorBoard scalars, train_log.jsonl, a loss-curve PNG."""

import json
import time

import jax
from clu import metric_writers
from etils import epath

LOG_FILE = "train_log.jsonl"


def format_metrics(step: int, metrics: dict) -> str:
  return f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))


class MetricWriter:
  """TensorBoard event files in MODEL_DIR and a JSON line per write (process 0 only).

  The log is rewritten whole on each write (object stores such as gs:// cannot append); it stays small.
  """

  def __init__(self, model_dir: str):
    self.lead = jax.process_index() == 0
    self.tb = metric_writers.create_default_writer(model_dir, just_logging=not self.lead, asynchronous=False)
    self.path = epath.Path(model_dir) / LOG_FILE
    self.lines = self.path.read_text().splitlines(keepends=True) if self.lead and self.path.exists() else []

  def write(self, step: int, scalars: dict) -> None:
    self.tb.write_scalars(step, scalars)
    if self.lead:
      self.lines.append(json.dumps({"step": step, **scalars}) + "\n")
      self.path.write_text("".join(self.lines))

  def close(self) -> None:
    self.tb.flush()
    self.tb.close()


class Progress:
  """Averages metrics between console lines; a line at most every `period` seconds, and at the end."""

  def __init__(self, start_step: int, total_steps: int, period: float, log_fn=print):
    self.start_step, self.total_steps, self.period, self.log_fn = start_step, total_steps, period, log_fn
    self.started = self.window_start = time.time()
    self.window_steps, self.window_tokens, self.sums = 0, 0, {}
    self.last_metrics = {}

  def update(self, step: int, metrics: dict, tokens: int) -> dict:
    """Returns the window's mean metrics when it logs a line, else {}."""
    self.window_steps += 1
    self.window_tokens += tokens
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    now = time.time()
    if now - self.window_start < self.period and step != self.total_steps and step != self.start_step + 1:
      return {}
    elapsed = now - self.window_start
    mean = {k: v / self.window_steps for k, v in self.sums.items()}
    mean["tokens_per_second"] = self.window_tokens / max(elapsed, 1e-9)
    mean["seconds_per_step"] = elapsed / self.window_steps
    done = step - self.start_step
    eta = (now - self.started) / done * (self.total_steps - step)
    self.log_fn(f"step {step}/{self.total_steps}  loss {mean['loss']:.4f}  acc {mean['accuracy']:.3f}  "
                f"{mean['tokens_per_second']:.0f} tokens/s  {mean['seconds_per_step']:.3f} s/step  "
                f"ETA {_duration(eta)}")
    self.window_start, self.window_steps, self.window_tokens, self.sums = now, 0, 0, {}
    self.last_metrics = mean
    return mean


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def read_log(model_dir: str) -> list[dict]:
  """Logged rows, the last one per (step, kind) winning: a resumed run rewrites steps after its checkpoint."""
  path = epath.Path(model_dir) / LOG_FILE
  if not path.is_file():
    return []
  rows = {}
  for line in path.read_text().splitlines():
    row = json.loads(line)
    rows[(row["step"], tuple(sorted(k for k in row if k != "step")))] = row
  return [rows[k] for k in sorted(rows)]


def plot_loss_curve(model_dir: str) -> str | None:
  """loss_curve.png: train loss, and eval losses if any, against step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_log(model_dir)
  train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
  if not train:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(*zip(*train), label="train loss")
  eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/loss")})
  for key in eval_keys:
    ax.plot(*zip(*[(r["step"], r[key]) for r in rows if key in r]), marker="o", label=key)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.legend()
  ax.grid(alpha=0.3)
  path = epath.Path(model_dir) / "loss_curve.png"
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  return str(path)

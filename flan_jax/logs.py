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
  """The one progress reporter: a line at most every `period` seconds (and on the first and last update) with
  the position, the window's mean metrics (loss, acc) and throughput, and the time left.

  Training counts steps and tokens; inference counts examples (`label="predict", unit="examples"`).
  """

  def __init__(self, start: int, total: int, period: float, log_fn=print, label: str = "step",
               unit: str = "steps"):
    self.start, self.total, self.period, self.log_fn = start, total, period, log_fn
    self.label, self.unit = label, unit
    self.window_start = time.time()
    self.window_done, self.window_tokens, self.sums = start, 0, {}
    self.window_updates = 0
    self.last_metrics = {}

  def due(self, done: int) -> bool:
    """Whether update(done) prints a line: the caller fetches metrics from the device only then."""
    first = self.window_done == self.start and self.window_updates == 0
    return first or done == self.total or time.time() - self.window_start >= self.period

  def update(self, done: int, metrics: dict | None = None, tokens: int = 0, log: bool = True) -> dict:
    """Records progress up to `done`; with `log`, returns the window's mean metrics when it prints a line, else {}."""
    due = log and self.due(done)
    self.window_updates += 1
    self.window_tokens += tokens
    for k, v in (metrics or {}).items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    if not due:
      return {}
    now = time.time()
    elapsed = max(now - self.window_start, 1e-9)
    mean = {k: v / self.window_updates for k, v in self.sums.items()}
    parts = [f"{self.label} {done}/{self.total}"]
    if "loss" in mean:
      parts.append(f"loss {mean['loss']:.4f}")
    if "accuracy" in mean:
      parts.append(f"acc {mean['accuracy']:.3f}")
    if self.window_tokens:
      mean["tokens_per_second"] = self.window_tokens / elapsed
      parts.append(f"{mean['tokens_per_second']:.0f} tokens/s")
    per_unit = elapsed / max(done - self.window_done, 1)
    if self.unit == "steps":
      mean["seconds_per_step"] = per_unit
      parts.append(f"{per_unit:.3f} s/step")
    else:
      parts.append(f"{1 / per_unit:.1f} {self.unit}/s")
    eta = per_unit * (self.total - done)
    parts.append(f"ETA {duration(eta)}")
    self.log_fn("  ".join(parts))
    self.window_start, self.window_done, self.window_updates, self.window_tokens, self.sums = now, done, 0, 0, {}
    self.last_metrics = mean
    return mean


def duration(seconds: float) -> str:
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

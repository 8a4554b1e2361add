"""Training output: a console line every few seconds, TensorBoard scalars, train_log.jsonl, a loss-curve PNG."""

import json
import shutil
import tempfile
import time

import jax
from clu import metric_writers
from etils import epath

LOG_FILE = "train_log.jsonl"
RESUMED = "resumed"  # a log row marking where a run resumed


def format_metrics(step: int, metrics: dict) -> str:
  return f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))


class MetricWriter:
  """TensorBoard event files in MODEL_DIR and a JSON line per write (process 0 only).

  The JSON log is appended to, never rewritten. Object stores (gs://) cannot append: there the log is written
  in parts of at most PART_LINES lines (train_log.jsonl, train_log.00001.jsonl, ...), only the last part is
  rewritten, and TensorBoard events are written to a local staging folder and copied up every UPLOAD_SECONDS
  and at the end (TensorFlow's own GCS client cannot be pointed at another endpoint).
  """
  PART_LINES = 100
  UPLOAD_SECONDS = 60.0

  def __init__(self, model_dir: str, start_step: int = 0):
    self.lead = jax.process_index() == 0
    self.model_dir = epath.Path(model_dir)
    self.remote = "://" in str(model_dir)
    self.staging = tempfile.mkdtemp(prefix="flan-jax-events-") if self.remote and self.lead else None
    self.tb = metric_writers.create_default_writer(self.staging or model_dir, just_logging=not self.lead,
                                                   asynchronous=False)
    self.uploaded = time.time()
    self.part = len(_log_parts(self.model_dir)) if self.lead and self.remote else 0
    self.part_lines = []
    if start_step:  # a resumed run: rows a killed run logged after this step no longer belong to the curve
      self._write_line({"step": start_step, RESUMED: True})

  def write(self, step: int, scalars: dict) -> None:
    self.tb.write_scalars(step, scalars)
    self._write_line({"step": step, **scalars})

  def _write_line(self, row: dict) -> None:
    if not self.lead:
      return
    line = json.dumps(row) + "\n"
    if not self.remote:
      with (self.model_dir / LOG_FILE).open("a") as f:
        f.write(line)
      return
    if len(self.part_lines) == self.PART_LINES:
      self.part, self.part_lines = self.part + 1, []
    self.part_lines.append(line)
    (self.model_dir / _part_name(self.part)).write_text("".join(self.part_lines))
    if time.time() - self.uploaded >= self.UPLOAD_SECONDS:
      self._upload_events()

  def _upload_events(self) -> None:
    self.tb.flush()
    for path in epath.Path(self.staging).iterdir():
      (self.model_dir / path.name).write_bytes(path.read_bytes())
    self.uploaded = time.time()

  def close(self) -> None:
    self.tb.flush()
    self.tb.close()
    if self.staging:
      self._upload_events()
      shutil.rmtree(self.staging, ignore_errors=True)


def _part_name(index: int) -> str:
  return LOG_FILE if index == 0 else LOG_FILE.replace(".jsonl", f".{index:05d}.jsonl")


def _log_parts(model_dir: epath.Path) -> list[epath.Path]:
  """train_log.jsonl and its further parts, in order."""
  parts = []
  while (model_dir / _part_name(len(parts))).is_file():
    parts.append(model_dir / _part_name(len(parts)))
  return parts


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
    self.excluded = 0.0  # seconds of the window spent on other work (an eval), left out of rates and the ETA
    self.last_metrics = {}

  def exclude(self, seconds: float) -> None:
    """Leave `seconds` of other work out of the current window's rates, so the ETA counts steps only."""
    self.excluded += seconds

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
    elapsed = max(now - self.window_start - self.excluded, 1e-9)
    first = self.window_done == self.start
    mean = {k: v / self.window_updates for k, v in self.sums.items()}
    parts = [f"{self.label} {done}/{self.total}"]
    if "loss" in mean:
      parts.append(f"loss {mean['loss']:.4f}")
    if "accuracy" in mean:
      parts.append(f"acc {mean['accuracy']:.3f}")
    if first and self.unit == "steps":
      # the first window holds the compilation: its rate would make the ETA hours long
      parts.append(f"first {'step' if done - self.window_done == 1 else 'steps'} with compilation "
                   f"{duration(elapsed)}")
    else:
      if self.window_tokens:
        mean["tokens_per_second"] = self.window_tokens / elapsed
        parts.append(f"{mean['tokens_per_second']:.0f} tokens/s")
      per_unit = elapsed / max(done - self.window_done, 1)
      if self.unit == "steps":
        mean["seconds_per_step"] = per_unit
        parts.append(f"{per_unit:.3f} s/step")
      else:
        parts.append(f"{1 / per_unit:.1f} {self.unit}/s")
      parts.append(f"ETA {duration(per_unit * (self.total - done))}")
    self.log_fn("  ".join(parts))
    self.window_start, self.window_done, self.window_updates, self.window_tokens, self.sums = now, done, 0, 0, {}
    self.excluded = 0.0
    self.last_metrics = mean
    return mean


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def read_log(model_dir: str) -> list[dict]:
  """Logged rows, the last one per (step, kind) winning; where a run resumed, the rows an earlier run logged
  after the resumed step are dropped (it was killed before saving them)."""
  rows = {}
  for line in (line for part in _log_parts(epath.Path(model_dir)) for line in part.read_text().splitlines()):
    row = json.loads(line)
    if row.get(RESUMED):
      rows = {k: v for k, v in rows.items() if k[0] <= row["step"]}
      continue
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

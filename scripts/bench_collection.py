"""The Flan 2022 collection's stream on one host: index build, time to first packed batch, peak RSS, threads and
packed rows per second per core, for a mixture of a synthetic collection (scripts/synthetic_flan_collection.py).

    .venv/bin/python scripts/bench_collection.py DIR [--mixture flan2022] [--batches 100] [--per_task]

Each run is a fresh process (run it once per mixture). The row index is built on the first run over DIR
(reported as index seconds) and read from the cache afterwards. --per_task reads the mixture through seqio's
pipelines, one per task (the way before the stream), as the baseline; a run whose memory passes --max_rss_gib or
that has no first batch after --max_seconds is stopped and reported so.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

BATCH = 64
LENGTHS = {"inputs": 2048, "targets": 512}


def threads() -> int:
  with open("/proc/self/status") as f:
    return int(next(line for line in f if line.startswith("Threads:")).split()[1])


WATCHDOG = """
import os, sys, time
pid, label, max_rss, max_seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
started, peak = time.time(), 0.0
while os.path.exists(f"/proc/{pid}") and not os.path.exists(sys.argv[5]):
  with open(f"/proc/{pid}/status") as f:
    fields = dict(line.split(":", 1) for line in f)
  peak = max(peak, int(fields["VmRSS"].split()[0]) / 2**20)
  if peak > max_rss or time.time() - started > max_seconds:
    print(f"{label}: no first batch; stopped after {time.time() - started:.0f} s at {peak:.1f} GiB RSS, "
          f"{fields['Threads'].strip()} threads", flush=True)
    os.kill(pid, 9)
    break
  time.sleep(0.2)
"""


def watchdog(label: str, max_rss_gib: float, max_seconds: float, done_file: str) -> subprocess.Popen:
  """A separate process that stops this one (and says why) when its memory or its wait for a first batch passes
  the limits: a thread here could not, while TensorFlow holds the interpreter building pipelines."""
  return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), label, str(max_rss_gib),
                           str(max_seconds), done_file])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("directory")
  parser.add_argument("--mixture", default="flan2022")
  parser.add_argument("--batches", type=int, default=100)
  parser.add_argument("--per_task", action="store_true")
  parser.add_argument("--max_rss_gib", type=float, default=12.0)
  parser.add_argument("--max_seconds", type=float, default=600.0)
  args = parser.parse_args()
  label = f"{args.mixture:16} {'per-task' if args.per_task else 'stream':8}"
  from flan_jax.data import collection, pipeline
  from flan_jax.data.paths import t5_vocabulary_path
  from flan_jax.vocab import sentencepiece_vocabulary
  started = time.perf_counter()
  collection.register_flan_collection(args.directory, sentencepiece_vocabulary(t5_vocabulary_path()))
  indexed = time.perf_counter() - started
  if args.per_task:
    collection.stream = lambda *a, **k: None  # seqio's pipelines, one per task
  done = os.path.join(tempfile.mkdtemp(), "first_batch")
  guard = watchdog(label, args.max_rss_gib, args.max_seconds, done)
  begin = time.perf_counter()  # the first batch includes building the pipeline (seqio's mixture builds them all)
  ds = pipeline.get_dataset(args.mixture, "train", LENGTHS, seed=0, batch_size=BATCH)
  batches = pipeline.iterate(iter(ds))
  next(batches)
  first = time.perf_counter() - begin
  open(done, "w").close()
  guard.wait()
  peak_threads = threads()
  begin, cpu = time.perf_counter(), time.process_time()
  for _ in range(args.batches):
    next(batches)
    peak_threads = max(peak_threads, threads())
  wall, cpu = time.perf_counter() - begin, time.process_time() - cpu
  rows = args.batches * BATCH
  restore = ""
  if not args.per_task:  # a resume deep into the run: the middle of the second epoch
    windows = len(ds.windows(1))
    again = iter(ds)
    begin = time.perf_counter()
    again.set_state({"epoch": 1, "window": windows // 2, "row": 100})
    next(again)
    restore = f", resume at epoch 1 window {windows // 2} of {windows}: {time.perf_counter() - begin:.1f} s"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"{label} index+register {indexed:6.1f} s, first "
        f"batch {first:6.1f} s, peak RSS {rss:5.2f} GiB, threads {peak_threads:4d}, {rows / wall:6.1f} packed rows/s "
        f"({rows / cpu:6.1f} per CPU-second){restore}", flush=True)
  os._exit(0)  # seqio's per-task pipelines take long to tear down


if __name__ == "__main__":
  sys.exit(main())

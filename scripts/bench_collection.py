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
import sys
import threading
import time

BATCH = 64
LENGTHS = {"inputs": 2048, "targets": 512}


def threads() -> int:
  with open("/proc/self/status") as f:
    return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def rss_gib() -> float:
  with open("/proc/self/status") as f:
    return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 2**20


def watchdog(label: str, max_rss_gib: float, max_seconds: float, started: float, done: threading.Event):
  """Stops the process (and says why) when its memory or its wait for a first batch passes the limits."""
  peak = 0.0
  while not done.wait(0.5):
    peak = max(peak, rss_gib())
    elapsed = time.perf_counter() - started
    if peak > max_rss_gib or elapsed > max_seconds:
      print(f"{label}: no first batch; stopped after {elapsed:.0f} s at {peak:.1f} GiB RSS, {threads()} threads",
            flush=True)
      os._exit(1)


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
  ds = pipeline.get_dataset(args.mixture, "train", LENGTHS, seed=0, batch_size=BATCH)
  batches = pipeline.iterate(iter(ds))
  begin, done = time.perf_counter(), threading.Event()
  threading.Thread(target=watchdog, args=(label, args.max_rss_gib, args.max_seconds, begin, done), daemon=True).start()
  next(batches)
  first = time.perf_counter() - begin
  done.set()
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

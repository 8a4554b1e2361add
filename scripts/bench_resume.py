"""Time to reach the input position of a resumed run: re-reading the stream (what resume did before the tf.data
iterator was checkpointed) against restoring the saved iterator (what `flan-jax train` does now).

    .venv/bin/python scripts/bench_resume.py [--mixture shared_mixture] [--steps 10 100 1000] [--batch_size 64]

Reads the stream once up to each step (the re-reading time is that cumulative time), saves the iterator there as
training does (tf.train.Checkpoint, one file per process), then restores it into a fresh pipeline and checks that
the next batch is the same.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from flan_jax.data import pipeline


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", default="shared_mixture")
  parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--lengths", default="2048/512")
  args = parser.parse_args()
  inputs, targets = (int(x) for x in args.lengths.split("/"))
  lengths = {"inputs": inputs, "targets": targets}
  make = lambda: pipeline.get_dataset(args.mixture, "train", lengths, seed=0, batch_size=args.batch_size)
  work = tempfile.mkdtemp()
  iterator, position, start = iter(make()), 0, time.time()
  print(f"| step | re-read the stream | save iterator | restore iterator | checkpoint size | same next batch |")
  print("|---:|---:|---:|---:|---:|:---:|", flush=True)
  for step in sorted(args.steps):
    while position < step:
      next(iterator)
      position += 1
      if position % 100 == 0:
        print(f"  (read {position} batches, {time.time() - start:.0f} s)", flush=True)
    replay = time.time() - start
    prefix = os.path.join(work, f"ds-{step}")
    t = time.time()
    path = tf.train.Checkpoint(ds=iterator).write(prefix)
    save = time.time() - t
    size = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work) if f.startswith(f"ds-{step}"))
    expected = next(iterator)
    position += 1
    t = time.time()
    restored = iter(make())
    tf.train.Checkpoint(ds=restored).read(path).assert_consumed()
    got = next(restored)
    restore = time.time() - t
    same = all(np.array_equal(expected[k].numpy(), got[k].numpy()) for k in expected)
    print(f"| {step:,} | {replay:.1f} s | {save:.2f} s | {restore:.2f} s | {size / 2**20:.1f} MiB | "
          f"{'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
  main()

"""Packing efficiency (share of non-pad tokens) of a mixture at given lengths, as the trainer consumes it.

    python scripts/packing_report.py --mixture demo_mixture --lengths 512/128 2048/512 --batches 20
"""

import argparse
import time

from flan_jax.data import pipeline


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", action="append", required=True)
  parser.add_argument("--lengths", nargs="+", default=["512/128", "2048/512"])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=20)
  args = parser.parse_args()
  print("| mixture | inputs/targets | inputs non-pad | targets non-pad | examples per row | examples/s |")
  print("|---|---|---:|---:|---:|---:|")
  for name in args.mixture:
    for lengths in args.lengths:
      inputs, targets = (int(x) for x in lengths.split("/"))
      ds = pipeline.get_dataset(name, "train", {"inputs": inputs, "targets": targets}, seed=0,
                                batch_size=args.batch_size)
      start = time.time()
      batches = list(pipeline.iterate(ds.take(args.batches)))
      elapsed = time.time() - start
      eff = pipeline.packing_efficiency(batches)
      rows = args.batches * args.batch_size
      print(f"| {name} | {lengths} | {eff['inputs']:.1%} | {eff['targets']:.1%} | {eff['examples_per_row']:.2f} "
            f"| {eff['examples_per_row'] * rows / elapsed:.0f} |", flush=True)


if __name__ == "__main__":
  main()

"""A synthetic Flan 2022 collection of the published shape, for tests and benchmarks (never shipped as data).

    .venv/bin/python scripts/synthetic_flan_collection.py OUT [--scale 0.01] [--format parquet|jsonl.gz|jsonl]

Open-Orca/FLAN's layout: fourteen `{submix}_{zs,fs}{opt,noopt}_data` folders (flan and t0 in four template
types, niv2, cot and dialog in two), rows with `inputs`, `targets`, `_task_name`, `_template_type`,
`_task_source`, shuffled across tasks within each file. The submixes' task counts and rows are the published
ones (flan 80 tasks plus 40 input-inversion ones, t0 193, niv2 1,554, cot 9 plus 9 `_ii`, dialog 6 plus 6 `_ii`;
5.36M, 1.65M, 10.07M, 184k and 554k rows at --scale 1, 17.8M in all); task sizes are as skewed as the real ones
(log-normal: a few tasks hold most rows); rows are 1.1-2.8 KB. The same arguments write the same files.
"""

import argparse
import gzip
import json
import os

import numpy as np

# submix -> (base tasks, input-inversion tasks, rows at scale 1, template types)
SUBMIXES = {"flan": (80, 40, 5_360_000, ("zsopt", "fsopt", "zsnoopt", "fsnoopt")),
            "t0": (193, 0, 1_650_000, ("zsopt", "fsopt", "zsnoopt", "fsnoopt")),
            "niv2": (1554, 0, 10_070_000, ("zsopt", "fsopt")),
            "cot": (9, 9, 184_000, ("zsopt", "fsopt")),
            "dialog": (6, 6, 554_000, ("zsopt", "fsopt"))}
ROWS_PER_FILE = 100_000
ROW_GROUP = 2_048
WORDS = ("the of and to in is was for that on with as by at from question answer which what option passage "
         "sentence premise hypothesis context claim true false yes no because therefore each number").split()


def task_names(submix: str) -> list[str]:
  base, inverted, _, _ = SUBMIXES[submix]
  names = [f"{submix}_task_{i:04d}" for i in range(base)]
  return names + [f"{submix}_task_{i:04d}_ii" for i in range(inverted)]


def task_rows(submix: str, scale: float, rng: np.random.Generator) -> np.ndarray:
  """Rows per task: log-normal sizes (sigma 1.5: the largest task tens of times the median), at least 1."""
  names = task_names(submix)
  weights = rng.lognormal(0.0, 1.5, len(names))
  total = max(len(names), int(round(SUBMIXES[submix][2] * scale)))
  return np.maximum(1, np.round(weights / weights.sum() * total)).astype(np.int64)


def texts(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
  """n strings of random words, each between low and high characters long."""
  words = np.array(WORDS)
  out = []
  lengths = rng.integers(low, high, n)
  picks = rng.integers(0, len(words), (n, high // 2))
  for length, pick in zip(lengths, picks):
    text = " ".join(words[pick])
    out.append(text[:length])
  return out


def write(path: str, rows: dict, fmt: str) -> None:
  if fmt == "parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(rows), path, row_group_size=ROW_GROUP)
    return
  opener = gzip.open if fmt == "jsonl.gz" else open
  keys = list(rows)
  with opener(path, "wt", encoding="utf-8") as f:
    for values in zip(*rows.values()):
      f.write(json.dumps(dict(zip(keys, values))) + "\n")


def generate(out: str, scale: float, fmt: str, seed: int = 0, log=print, inputs_chars=(1000, 2700),
             targets_chars=(60, 120)) -> dict:
  """Writes the collection under `out`; returns {submix: {task: rows}}. Tests shorten the texts."""
  rng = np.random.default_rng(seed)
  written = {}
  for submix, (_, _, _, template_types) in SUBMIXES.items():
    names = task_names(submix)
    sizes = task_rows(submix, scale, rng)
    written[submix] = dict(zip(names, sizes.tolist()))
    # each task's rows spread over the template types, as evenly as whole rows allow
    types = len(template_types)
    for i, template_type in enumerate(template_types):
      counts = sizes // types + (i < sizes % types)
      folder = os.path.join(out, f"{submix}_{template_type}_data")
      os.makedirs(folder, exist_ok=True)
      tasks = np.repeat(np.arange(len(names)), counts)
      rng.shuffle(tasks)
      for start in range(0, len(tasks), ROWS_PER_FILE):
        part = tasks[start:start + ROWS_PER_FILE]
        n = len(part)
        rows = {"inputs": texts(rng, n, *inputs_chars), "targets": texts(rng, n, *targets_chars),
                "_task_name": [names[i] for i in part], "_template_type": [template_type[:2] + "_" + template_type[2:]] * n,
                "_task_source": [submix.upper()] * n}
        name = f"part-{start // ROWS_PER_FILE:05d}.{fmt}"
        write(os.path.join(folder, name), rows, fmt)
      log(f"{folder}: {len(tasks):,} rows")
  return written


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--scale", type=float, default=0.01)
  parser.add_argument("--format", choices=("parquet", "jsonl.gz", "jsonl"), default="parquet")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  generate(args.out, args.scale, args.format, args.seed)


if __name__ == "__main__":
  main()

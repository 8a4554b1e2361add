"""The Flan Collection's published files on disk (local or gs://): which folders and files there are, how many
rows each task has in each, and the rows of one task as a tf.data stream.

The collection comes as a folder per submix and template type (`flan_zsopt`, `t0_fsnoopt`, `cot_fsopt`, ...,
optionally with a `_data` suffix; a folder per submix alone, `cot/`, works too), each holding JSON-lines
(`.jsonl`, `.jsonl.gz`) or Parquet files whose rows have `inputs`, `targets`, `_task_name`,
`_task_source` and `_template_type`, as FLAN's seqio export writes them (`_task_source` is not needed here).

Files are never read whole: counting streams them line by line (JSON lines) or one row group of two columns at a
time (Parquet), and reading streams them into tf.data. Every file operation goes through etils.epath, so a gs://
folder is read by the same code as a local one. Counting reads the whole collection once, so the
counts of each file are kept in a local cache (`$XDG_CACHE_HOME`, else `~/.cache`, under `flan_jax/`), reused
while the file's size and modification time stay the same.
"""

import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import os
import re
import sys

import numpy as np
import tensorflow as tf
from etils import epath

from flan_jax.data.preprocessors import ERROR_MARK
from flan_jax.errors import UserError

SUBMIXES = ("flan", "t0", "niv2", "cot", "dialog")
REQUIRED_COLUMNS = ("inputs", "targets", "_task_name", "_template_type")
_FOLDER = re.compile(rf"({'|'.join(SUBMIXES)})(_(zs|fs)_?(opt|noopt))?(_data)?")
_JSONL = (".jsonl", ".jsonl.gz")
# A name's JSON string in a row's raw line: a key cannot occur inside a string value, whose quotes are escaped.
_FIELDS = {column: re.compile(rb'"%s"\s*:\s*"((?:[^"\\]|\\.)*)"' % column.encode())
           for column in ("_task_name", "_template_type")}
_CACHE_VERSION = 3
_LINES_PER_BATCH = 64  # lines a file gives at a time, parsed in one Python call
# A JSON-lines file is read in chunks of this many lines; the index keeps where each starts (in uncompressed
# bytes), so the collection stream can start reading at any chunk.
CHUNK_LINES = 2_048


@dataclasses.dataclass
class TaskRows:
  """Where one task's rows are: rows per template type, and the files that hold some (for a Parquet file, the
  row groups that do; None for a JSON-lines file)."""
  counts: dict = dataclasses.field(default_factory=dict)
  files: dict = dataclasses.field(default_factory=dict)


def is_parquet(path: str) -> bool:
  return path.endswith(".parquet")


def find_files(directory: str) -> dict[str, list[str]]:
  """submix -> its data files, from the folder names under `directory`."""
  if not epath.Path(directory).is_dir():
    raise UserError(f"Flan Collection directory not found: {directory}")
  found = {}
  for entry in sorted(epath.Path(directory).iterdir(), key=lambda p: p.name):
    match = _FOLDER.fullmatch(entry.name)
    folder = os.path.join(directory, entry.name)
    if not match or not entry.is_dir():
      continue
    files = sorted(f for f in _files_under(folder) if f.endswith(_JSONL) or is_parquet(f))
    if not files:
      raise UserError(f"{folder}: no data files (.jsonl, .jsonl.gz or .parquet)")
    found.setdefault(match.group(1), []).extend(files)
  if not found:
    raise UserError(f"{directory}: no Flan Collection folders (named like flan_zsopt, t0_fsnoopt, niv2_zsopt, "
                    f"cot_fsopt, dialog_zsopt, or a submix alone: {', '.join(SUBMIXES)})")
  return found


def _files_under(folder: str) -> list[str]:
  """Every file under `folder`, as `folder`/relative path (epath's walk drops the gs:// of its roots)."""
  out = []
  for entry in epath.Path(folder).iterdir():
    path = os.path.join(folder, entry.name)
    out.extend(_files_under(path) if entry.is_dir() else [path])
  return out


def _missing(columns) -> str:
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  return f"missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})" if missing else ""


def _json_string(raw: bytes) -> str:
  return json.loads(b'"' + raw + b'"')


def _count_jsonl(path: str) -> dict:
  """{task: {template type: rows}} and where each chunk of CHUNK_LINES lines starts, one line at a time. The two
  names are found without parsing the whole row; the first row, and any row where they are not found so, is
  parsed whole (and checked)."""
  counts, decoded, chunks, offset = {}, {}, [], 0
  with _open_lines(path) as lines:
    for line_no, line in enumerate(_complete_lines(path, lines), start=1):
      if line_no % CHUNK_LINES == 1:
        chunks.append(offset)
      offset += len(line)
      if not line.strip():
        continue
      found = [_FIELDS[column].search(line) for column in ("_task_name", "_template_type")]
      if counts and all(found):
        for m in found:
          if m.group(1) not in decoded:
            decoded[m.group(1)] = _json_string(m.group(1))
        task, template_type = (decoded[m.group(1)] for m in found)
      else:
        task, template_type = _check_row(path, line_no, line)
      by_type = counts.setdefault(task, {})
      by_type[template_type] = by_type.get(template_type, 0) + 1
  return {"tasks": counts, "chunks": chunks, "lines": line_no if chunks else 0}


def _complete_lines(path: str, lines):
  """The lines of an open file; a damaged gzip stream is one error naming the file."""
  try:
    yield from lines
  except (EOFError, OSError, gzip.BadGzipFile) as e:
    raise UserError(f"{path}: damaged file ({e})") from None


def _check_row(path: str, line_no: int, line: bytes) -> tuple[str, str]:
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{line_no}: malformed JSON line ({e.msg})") from e
  complaint = _missing(row) if isinstance(row, dict) else "expected a JSON object"
  if not complaint and not all(isinstance(row[c], str) for c in REQUIRED_COLUMNS):
    complaint = f"{', '.join(REQUIRED_COLUMNS)} must be strings"
  if complaint:
    raise UserError(f"{path}:{line_no}: {complaint}")
  return row["_task_name"], row["_template_type"]


def _open_lines(path: str):
  """A JSON-lines file's raw lines (bytes), uncompressed if it ends in .gz."""
  raw = epath.Path(path).open("rb")
  return gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw


def _parquet(path: str):
  import pyarrow.parquet as pq
  return pq.ParquetFile(epath.Path(path).open("rb"))


def _stat(path: str) -> tuple[int, int]:
  """(size, modification time in ns): what tells the counts cache a file changed."""
  if "://" not in path:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
  stat = epath.Path(path).stat()
  return stat.length, int(stat.mtime * 1e9)


def _count_parquet(path: str) -> dict:
  """{task: {template type: rows}} and {task: [row groups]}, reading two columns of one row group at a time."""
  try:
    reader = _parquet(path)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001  (pyarrow's errors for a file that is not Parquet or is cut short)
    raise UserError(f"{path}: damaged Parquet file ({str(e).splitlines()[0]})") from None
  complaint = _missing(reader.schema_arrow.names)
  if complaint:
    raise UserError(f"{path}: {complaint}")
  counts, row_groups = {}, {}
  for group in range(reader.num_row_groups):
    table = reader.read_row_group(group, columns=["_task_name", "_template_type"])
    for row in table.group_by(["_task_name", "_template_type"]).aggregate([([], "count_all")]).to_pylist():
      task, template_type, n = row["_task_name"], row["_template_type"], row["count_all"]
      if task is None or template_type is None:
        raise UserError(f"{path}: row group {group} has rows without a _task_name or _template_type")
      by_type = counts.setdefault(task, {})
      by_type[template_type] = by_type.get(template_type, 0) + n
      groups = row_groups.setdefault(task, [])
      if not groups or groups[-1] != group:
        groups.append(group)
  group_rows = [reader.metadata.row_group(g).num_rows for g in range(reader.num_row_groups)]
  return {"tasks": counts, "row_groups": row_groups, "group_rows": group_rows}


def _cache_path(directory: str) -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  key = hashlib.sha256(directory.encode()).hexdigest()[:16]
  return os.path.join(base, "flan_jax", "flan_collection", f"{key}.json")


def _read_cache(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      cache = json.load(f)
  except (OSError, ValueError):
    return {}
  return cache.get("files", {}) if cache.get("version") == _CACHE_VERSION else {}


def _write_cache(path: str, files: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"version": _CACHE_VERSION, "files": files}, f)
  os.replace(path + ".tmp", path)


def _count(path: str) -> dict:
  return _count_parquet(path) if is_parquet(path) else _count_jsonl(path)


def count_files(directory: str, paths: list[str]) -> dict[str, dict]:
  """path -> its counts, from the cache where the file is unchanged, else by streaming it (several at once)."""
  cache_path = _cache_path(directory)
  cached = _read_cache(cache_path)
  out, todo = {}, []
  for path in paths:
    stat = _stat(path)
    entry = cached.get(path)
    if entry and (entry["size"], entry["mtime_nsec"]) == stat:
      out[path] = entry
    else:
      todo.append((path, stat))
  if todo:
    print(f"flan-jax: counting the rows of {len(todo)} Flan Collection files under {directory} "
          f"(once; kept in {cache_path})", file=sys.stderr, flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
      for (path, stat), counts in zip(todo, pool.map(_count, [p for p, _ in todo])):
        out[path] = {"size": stat[0], "mtime_nsec": stat[1], **counts}
    _write_cache(cache_path, {**cached, **out})
  return out


@dataclasses.dataclass
class Collection:
  """A collection folder's index: per file, its rows per task and template type and its chunks (Parquet row
  groups holding each task, or where each chunk of JSON lines starts); per submix, where each task's rows are."""
  directory: str
  files: dict   # path -> {"tasks": {task: {template type: rows}}, "row_groups": {task: [groups]} or "chunks": [...]}
  tasks: dict   # submix -> task name (as in `_task_name`) -> TaskRows

  @classmethod
  def index(cls, directory: str) -> "Collection":
    directory = directory.rstrip("/") if "://" in directory else os.path.abspath(directory)
    found = find_files(directory)
    counts = count_files(directory, [path for paths in found.values() for path in paths])
    tasks, submix_of = {}, {}
    for submix, paths in found.items():
      by_task = tasks.setdefault(submix, {})
      for path in paths:
        for task, by_type in counts[path]["tasks"].items():
          if submix_of.setdefault(task, submix) != submix:
            raise UserError(f"{directory}: task {task!r} has rows in both {submix_of[task]} and {submix} folders")
          rows = by_task.setdefault(task, TaskRows())
          for template_type, n in by_type.items():
            rows.counts[template_type] = rows.counts.get(template_type, 0) + n
          rows.files[path] = counts[path]["row_groups"][task] if is_parquet(path) else None
    return cls(directory, counts, tasks)


# --- reading one task's rows ---

def _raise_in_tf(message: str):
  raise ValueError(f"{ERROR_MARK}<<{message}>>")


def _strings(values) -> np.ndarray:
  return np.array([v.encode() for v in values], dtype=object)


def _jsonl_rows(paths: list[str], task: str) -> tf.data.Dataset:
  """Rows of `task` from JSON-lines files, parsed a batch of lines at a time (one Python call per batch)."""

  def parse(lines):
    inputs, targets = [], []
    for line in lines:
      try:
        row = json.loads(line) if line.strip() else {"_task_name": None}
        if row["_task_name"] == task:
          inputs.append(row["inputs"])
          targets.append(row["targets"])
      except (ValueError, KeyError, AttributeError, TypeError):
        _raise_in_tf(f"a Flan Collection row of {task} is not a JSON object with string inputs and targets: "
                     f"{line[:200]!r}")
    return _strings(inputs), _strings(targets)

  def line_batches(path):
    with _open_lines(path.decode()) as lines:
      batch = []
      for line in lines:
        batch.append(line.rstrip(b"\r\n"))
        if len(batch) == _LINES_PER_BATCH:
          yield np.array(batch, dtype=object)
          batch = []
      if batch:
        yield np.array(batch, dtype=object)

  def to_rows(lines):
    inputs, targets = tf.numpy_function(parse, [lines], [tf.string, tf.string], stateful=False)
    return {"inputs": tf.ensure_shape(inputs, [None]), "targets": tf.ensure_shape(targets, [None])}

  ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
      lambda path: tf.data.Dataset.from_generator(line_batches, args=(path,),
                                                  output_signature=tf.TensorSpec([None], tf.string)),
      cycle_length=min(len(paths), 16), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _parquet_rows(units: list[tuple[str, int]], task: str) -> tf.data.Dataset:
  """Rows of `task` from (file, row group) units, one row group (three columns) in memory at a time."""

  def read(path, group):
    import pyarrow.compute as pc
    table = _parquet(path.decode()).read_row_group(int(group), columns=["_task_name", "inputs", "targets"])
    table = table.filter(pc.equal(table["_task_name"], task))
    return _strings(table["inputs"].to_pylist()), _strings(table["targets"].to_pylist())

  def to_rows(path, group):
    inputs, targets = tf.numpy_function(read, [path, group], [tf.string, tf.string], stateful=False)
    return {"inputs": tf.ensure_shape(inputs, [None]), "targets": tf.ensure_shape(targets, [None])}

  paths, groups = zip(*units)
  ds = tf.data.Dataset.from_tensor_slices((list(paths), list(groups)))
  return ds.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def task_rows(task: str, files: dict, shuffle: bool, seed: int | None) -> tf.data.Dataset:
  """The rows of `task` in `files` (path -> Parquet row groups, or None) as {'inputs', 'targets'} strings; with
  `shuffle`, files and row groups in an order drawn from `seed`."""
  rng = np.random.default_rng(seed)
  paths = list(files)
  if shuffle:
    rng.shuffle(paths)
  jsonl = [p for p in paths if files[p] is None]
  units = [(p, g) for p in paths if files[p] is not None for g in files[p]]
  if shuffle:
    rng.shuffle(units)
  parts = ([_jsonl_rows(jsonl, task)] if jsonl else []) + ([_parquet_rows(units, task)] if units else [])
  ds = parts[0]
  for part in parts[1:]:
    ds = ds.concatenate(part)
  return ds

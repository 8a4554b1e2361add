"""The Flan 2022 collection as one stream: packed training batches from its files in bounded memory, whatever
the number of tasks, with a position that saves and restores in constant time.

seqio's way, one pipeline per leaf task mixed by rate, holds 1,897 pipelines open for `flan2022` (FLAN's own
mixture of it hangs for hours). Here every file is read once per epoch instead, in chunks (a Parquet row group,
or CHUNK_LINES lines of JSON lines), and each row is kept with its unit's probability. A unit is (task,
template type), at its rate in FLAN's mixing (flan_jax.data.collection). Keeping unit u's rows with probability
rate_u / rows_u, scaled so that the largest is 1, gives each unit its share of the rates, as seqio's sampling
does, without holding any unit's rows.

An epoch interleaves the chunks of all files in a random order drawn from (seed, epoch), each file front to
back (so a gzip file is decompressed once, in order); a host takes every num_shards-th chunk, so hosts never
read the same row. Chunks are read a window (WINDOW_ROWS rows or more) at a time; the kept rows of a window are
shuffled, tokenized, cut as seqio cuts them (the first length - 1 tokens, then EOS) and packed. The position is
(epoch, window, packed rows given out of it): restoring it re-reads one window.
"""

import atexit
import collections
import concurrent.futures
import dataclasses
import gzip
import json
import queue
import threading
import weakref
import zlib

import numpy as np
import pyarrow
import seqio
from etils import epath

from flan_jax.data import collection_files
from flan_jax.errors import UserError

WINDOW_ROWS = 32_768  # rows read, shuffled and packed together (whole chunks)
OPEN_ROWS = 8     # packed rows an example may still join
READERS = 4       # chunks read at once


def _first_line(e: Exception) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


@dataclasses.dataclass(frozen=True)
class Chunk:
  path: str
  index: int          # row group, or chunk of CHUNK_LINES lines
  rows: int
  offset: int = 0     # JSON lines: where the chunk starts, in uncompressed bytes


class Stream:
  """Iterable of packed batches ({feature: int32 [rows, length]}); `iter()` gives an iterator with
  get_state() / set_state(state) for checkpoints."""

  def __init__(self, units: dict, files: dict, vocabulary: seqio.Vocabulary, feature_lengths: dict,
               batch_size: int, seed: int = 0, shard_index: int = 0, num_shards: int = 1, epochs: int | None = None,
               shuffle: bool = True):
    """units: (task name as in the files, template type) -> rate; files: path -> {"tasks": {task: {type: rows}},
    "row_groups" or "chunks"} (the collection index's per-file entries)."""
    self.vocabulary, self.lengths = vocabulary, dict(feature_lengths)
    self.batch_size, self.seed, self.epochs, self.shuffle = batch_size, seed, epochs, shuffle
    self.shard_index, self.num_shards = shard_index, num_shards
    rows = collections.Counter()
    for entry in files.values():
      for task, by_type in entry["tasks"].items():
        for template_type, n in by_type.items():
          rows[(task, template_type)] += n
    self.keep = {}
    for unit, rate in units.items():
      if not rows[unit]:
        raise UserError(f"no rows of {unit[0]} ({unit[1]}) in the collection's files")
      self.keep[unit] = rate / rows[unit]
    top = max(self.keep.values())
    self.keep = {unit: p / top for unit, p in self.keep.items()}
    tasks = {task for task, _ in units}
    self.files = sorted(path for path, entry in files.items() if tasks & set(entry["tasks"]))
    self.file_ids = {path: i for i, path in enumerate(self.files)}
    self.chunks = {}
    for path in self.files:
      entry = files[path]
      if collection_files.is_parquet(path):
        groups = sorted({g for task in tasks & set(entry["tasks"]) for g in entry["row_groups"][task]})
        self.chunks[path] = [Chunk(path, g, entry["group_rows"][g]) for g in groups]
      else:
        lines = lambda i: min(collection_files.CHUNK_LINES, entry["lines"] - i * collection_files.CHUNK_LINES)
        self.chunks[path] = [Chunk(path, i, lines(i), offset) for i, offset in enumerate(entry["chunks"])]

  def __iter__(self):
    return StreamIterator(self)

  def skip(self, batches: int) -> "Skipped":
    return Skipped(self, batches)

  # --- one epoch's order, a window's examples ---

  def order(self, epoch: int) -> list[Chunk]:
    """This host's chunks of `epoch`: every file front to back, the files' chunks interleaved at random."""
    keys, chunks = [], []
    rng = np.random.default_rng([self.seed, epoch])
    for path in self.files:
      n = len(self.chunks[path])
      keys.append(np.sort(rng.random(n)) if self.shuffle else np.arange(n) + len(chunks))
      chunks += self.chunks[path]
    order = np.argsort(np.concatenate(keys), kind="stable") if chunks else []
    return [chunks[i] for i in order][self.shard_index::self.num_shards]

  def windows(self, epoch: int) -> list[list[Chunk]]:
    """This host's chunks of `epoch` in windows of at least WINDOW_ROWS rows (the last one may have fewer)."""
    windows, rows = [[]], 0
    for chunk in self.order(epoch):
      if rows >= WINDOW_ROWS:
        windows.append([])
        rows = 0
      windows[-1].append(chunk)
      rows += chunk.rows
    return windows if windows[0] else []

  def examples(self, epoch: int = 0):
    """(inputs, targets, task, template type) of every kept row from `epoch` on, in the stream's order, before
    tokenizing: what `tasks show` prints, and what the mixture tests count."""
    reader = Reader()
    try:
      with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        while self.epochs is None or epoch < self.epochs:
          for w, chunks in enumerate(self.windows(epoch)):
            yield from self.window_examples(epoch, w, chunks, reader, pool)
          epoch += 1
    finally:
      reader.close()

  def window_examples(self, epoch: int, window: int, chunks: list[Chunk], reader: "Reader",
                      pool: concurrent.futures.Executor) -> list[tuple[str, str, str, str]]:
    """The kept (inputs, targets, task, template type) of one window, in their shuffled order."""
    by_file = collections.defaultdict(list)  # a file's chunks in order, on one thread: a gzip file is read once
    for chunk in chunks:
      by_file[chunk.path].append(chunk)
    read = lambda file_chunks: [e for c in file_chunks for e in self._kept(epoch, c, reader.read(c))]
    kept = [e for part in pool.map(read, by_file.values()) for e in part]
    if self.shuffle:
      order = np.random.default_rng([self.seed, epoch, window, self.shard_index]).permutation(len(kept))
      kept = [kept[i] for i in order]
    return kept

  def _kept(self, epoch: int, chunk: Chunk, rows) -> list:
    tasks, types, inputs, targets = rows
    draws = np.random.default_rng([self.seed, epoch, self.file_ids[chunk.path], chunk.index]).random(len(tasks))
    out = []
    for i, (task, template_type) in enumerate(zip(tasks, types)):
      p = self.keep.get((task, template_type))
      if p is not None and draws[i] < p:
        out.append((inputs[i], targets[i], task, template_type))
    return out

  # --- tokens and packing ---

  def tokenize(self, texts: list[str], length: int) -> list[list[int]]:
    if isinstance(self.vocabulary, seqio.SentencePieceVocabulary):
      ids = self.vocabulary.tokenizer.encode(texts)
    else:
      ids = [list(self.vocabulary.encode(t)) for t in texts]
    return [list(t[:length - 1]) + [1] for t in ids]  # seqio's append_eos_after_trim

  def pack(self, examples: list) -> list[dict]:
    """Packed rows, each a dict of int32 features; examples join the first open row they fit in."""
    inputs = self.tokenize([e[0] for e in examples], self.lengths["inputs"])
    targets = self.tokenize([e[1] for e in examples], self.lengths["targets"])
    open_rows, done = [], []
    for enc, dec in zip(inputs, targets):
      for row in open_rows:
        if row[0] + len(enc) <= self.lengths["inputs"] and row[1] + len(dec) <= self.lengths["targets"]:
          break
      else:
        if len(open_rows) == OPEN_ROWS:
          done.append(open_rows.pop(0))
        row = [0, 0, []]
        open_rows.append(row)
      row[0] += len(enc)
      row[1] += len(dec)
      row[2].append((enc, dec))
    return [self._features(row[2]) for row in done + open_rows]

  def _features(self, examples) -> dict:
    li, lt = self.lengths["inputs"], self.lengths["targets"]
    f = {k: np.zeros(li if k.startswith("encoder") else lt, np.int32) for k in FEATURES}
    ei = ti = 0
    for segment, (enc, dec) in enumerate(examples, start=1):
      f["encoder_input_tokens"][ei:ei + len(enc)] = enc
      f["encoder_segment_ids"][ei:ei + len(enc)] = segment
      f["encoder_positions"][ei:ei + len(enc)] = np.arange(len(enc))
      f["decoder_target_tokens"][ti:ti + len(dec)] = dec
      f["decoder_input_tokens"][ti + 1:ti + len(dec)] = dec[:-1]  # shifted right; 0 starts each segment
      f["decoder_segment_ids"][ti:ti + len(dec)] = segment
      f["decoder_positions"][ti:ti + len(dec)] = np.arange(len(dec))
      f["decoder_loss_weights"][ti:ti + len(dec)] = 1
      ei, ti = ei + len(enc), ti + len(dec)
    return f


FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_target_tokens",
            "decoder_input_tokens", "decoder_segment_ids", "decoder_positions", "decoder_loss_weights")


class Reader:
  """Reads chunks; keeps a JSON-lines file open where the last chunk ended, since each file is read in order
  (a gzip file cannot be entered in the middle: it is decompressed from where it is, or from its start)."""

  def __init__(self):
    self._open, self._lock = {}, threading.Lock()

  def read(self, chunk: Chunk):
    """(task names, template types, inputs, targets) of every row of the chunk."""
    try:
      if collection_files.is_parquet(chunk.path):
        return self._parquet(chunk)
      return self._jsonl(chunk)
    except UserError:
      raise
    except (EOFError, zlib.error, gzip.BadGzipFile, pyarrow.ArrowException) as e:
      raise UserError(f"{chunk.path}: damaged file ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  (a storage error that outlasted its client's retries)
      raise UserError(f"cannot read {chunk.path}: {type(e).__name__}: {_first_line(e)}") from None

  def _parquet(self, chunk: Chunk):
    import pyarrow.parquet as pq
    with epath.Path(chunk.path).open("rb") as f:
      table = pq.ParquetFile(f).read_row_group(chunk.index,
                                               columns=["_task_name", "_template_type", "inputs", "targets"])
    return tuple(table[c].to_pylist() for c in ("_task_name", "_template_type", "inputs", "targets"))

  def _jsonl(self, chunk: Chunk):
    with self._lock:
      handle, position = self._open.pop(chunk.path, (None, 0))
    if handle is None or position > chunk.offset:
      if handle is not None:
        handle.close()
      handle, position = collection_files._open_lines(chunk.path), 0  # noqa: SLF001
    if chunk.path.endswith(".gz"):
      while position < chunk.offset:
        data = handle.read(min(chunk.offset - position, 1 << 24))
        if not data:
          raise UserError(f"{chunk.path}: shorter than when the collection was indexed; delete the index cache")
        position += len(data)
    else:
      handle.seek(chunk.offset)
      position = chunk.offset
    tasks, types, inputs, targets = [], [], [], []
    for number in range(collection_files.CHUNK_LINES):
      line = handle.readline()
      if not line:
        break
      position += len(line)
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        values = [row[c] for c in ("_task_name", "_template_type", "inputs", "targets")]
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{chunk.path}:{chunk.index * collection_files.CHUNK_LINES + number + 1}: not a JSON "
                        f"object with _task_name, _template_type, inputs and targets ({e})") from None
      for out, value in zip((tasks, types, inputs, targets), values):
        out.append(value)
    with self._lock:
      self._open[chunk.path] = (handle, position)
    return tasks, types, inputs, targets

  def close(self):
    for handle, _ in self._open.values():
      handle.close()
    self._open.clear()


class StreamIterator:
  """The stream from a position; windows are read and packed one ahead, on a background thread."""

  def __init__(self, stream: Stream):
    self.stream = stream
    self.epoch, self.window, self.row = 0, 0, 0   # the position: the next row to give out
    self._worker, self._rows = None, None

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "window": self.window, "row": self.row}

  def set_state(self, state: dict) -> None:
    self.close()
    self.epoch, self.window, self.row = int(state["epoch"]), int(state["window"]), int(state["row"])

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    rows = [self._next_row() for _ in range(self.stream.batch_size)]
    return {k: np.stack([r[k] for r in rows]) for k in FEATURES}

  def _next_row(self) -> dict:
    while True:
      if self._rows is None:
        if self._worker is None:
          self._worker = _Windows(self.stream, self.epoch, self.window)
        item = self._worker.get()
        if item is None:  # the last epoch is over
          raise StopIteration
        epoch, window, self._rows = item
        if (epoch, window) != (self.epoch, self.window):  # past the end of an epoch
          self.epoch, self.window, self.row = epoch, window, 0
      if self.row < len(self._rows):
        self.row += 1
        return self._rows[self.row - 1]
      self._rows, self.window, self.row = None, self.window + 1, 0

  def close(self):
    if self._worker is not None:
      self._worker.close()
    self._worker, self._rows = None, None

  def __del__(self):
    self.close()


_LIVE = weakref.WeakSet()  # workers to stop before the interpreter exits (their threads run native code)
atexit.register(lambda: [w.close() for w in list(_LIVE)])


class _Windows:
  """Packs the windows from (epoch, window) on, one ahead of the consumer, on a thread."""

  def __init__(self, stream: Stream, epoch: int, window: int):
    _LIVE.add(self)
    self.stream, self.reader = stream, Reader()
    self.pool = concurrent.futures.ThreadPoolExecutor(READERS)
    self.queue, self.closed = queue.Queue(maxsize=1), threading.Event()
    self.thread = threading.Thread(target=self._run, args=(epoch, window), daemon=True)
    self.thread.start()

  def _positions(self, epoch: int, window: int):
    while self.stream.epochs is None or epoch < self.stream.epochs:
      windows = self.stream.windows(epoch)
      if not windows:
        raise UserError(f"shard {self.stream.shard_index} of {self.stream.num_shards} of the collection holds no "
                        f"chunk to read: fewer chunks than hosts")
      for w in range(window, len(windows)):
        yield epoch, w, windows[w]
      epoch, window = epoch + 1, 0

  def _run(self, epoch: int, window: int):
    try:
      for e, w, chunks in self._positions(epoch, window):
        rows = self.stream.pack(self.stream.window_examples(e, w, chunks, self.reader, self.pool))
        if not self._put((e, w, rows)):
          return
      self._put(None)
    except Exception as error:  # noqa: BLE001  (handed to the consumer, which raises it)
      self._put(error)

  def _put(self, item) -> bool:
    while not self.closed.is_set():
      try:
        self.queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def get(self):
    item = self.queue.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self.closed.set()
    self.thread.join()
    self.pool.shutdown(wait=True, cancel_futures=True)
    self.reader.close()


class Skipped:
  """A stream whose first `batches` batches are read and dropped (a checkpoint without a saved position)."""

  def __init__(self, stream: Stream, batches: int):
    self.stream, self.batches = stream, batches

  def __iter__(self):
    iterator = iter(self.stream)
    for _ in range(self.batches):
      next(iterator)
    return iterator

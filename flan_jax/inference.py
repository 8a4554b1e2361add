"""Text in, text (or log-likelihoods) out: tokenization, fixed-shape batches, decoding and scoring.

Inputs are cut as training cuts them (their first tokens, then EOS) only when longer than an `inputs_length`
that is set, and every cut is reported. Batches hold inputs of similar length, padded to `batch_size` rows and
to a length bucket, so each function compiles once per bucket. On a mesh, parameters are sharded by
the training rules and each batch's rows over 'data'; every process runs every batch (feeding its layout's
rows) and gets all results back.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from flan_jax import checkpoints, decoding, lora, partitioning
from flan_jax.data import registration
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.vocab import byte_vocabulary, sentencepiece_vocabulary


@dataclasses.dataclass
class Model:
  """A checkpoint loaded for inference."""
  config: T5Config
  params: dict
  vocabulary: seqio.Vocabulary
  fingerprint: str | None = None
  mesh: jax.sharding.Mesh | None = None  # None: everything on one device


def load(checkpoint: str, mesh: jax.sharding.Mesh | None = None) -> Model:
  """The checkpoint's parameters, sharded over `mesh` by the training rules (or on one device)."""
  root, step, meta = checkpoints.read_meta(checkpoint)
  config = checkpoints.model_config(meta)
  params = lora.load_params(root, step, meta, config, mesh)
  fingerprint = meta.get("vocabulary_fingerprint")
  if fingerprint and fingerprint.startswith("ByteVocabulary"):
    vocabulary = byte_vocabulary()
  else:
    path = checkpoints.vocabulary_path(root, meta)
    if not path:
      raise UserError(f"checkpoint {root}/{step} records no vocabulary")
    vocabulary = sentencepiece_vocabulary(path)
  return Model(config, params, vocabulary, fingerprint, mesh)


DEFAULT_DECODE_LENGTH = 128


@dataclasses.dataclass
class Settings:
  batch_size: int = 8
  inputs_length: int | None = None      # None: as long as the longest input, so nothing is cut
  max_decode_length: int | None = None  # None: DEFAULT_DECODE_LENGTH for answers; scored targets are never cut
  beam_size: int = 1          # >1: beam search
  alpha: float = 0.6          # beam search brevity penalty
  temperature: float = 0.0    # 0: greedy
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0


@dataclasses.dataclass
class Output:
  """What a function computed per input, and which inputs or answers did not fit (never a silent cut)."""
  values: list
  inputs_cut: np.ndarray   # bool per input: longer than inputs_length, its first tokens kept
  answers_cut: np.ndarray  # bool per input: the answer stopped at max_decode_length, or the target was cut to it


def tokenize(vocabulary, texts: list[str], length: int | None = None) -> tuple[list[list[int]], np.ndarray]:
  """Each text's token ids and EOS, cut as training cuts them (seqio's append_eos_after_trim: the first
  length - 1 tokens, then EOS); and which texts were cut."""
  ids, cut = [], []
  for text in texts:
    tokens = list(vocabulary.encode(text))
    cut.append(length is not None and len(tokens) + 1 > length)
    ids.append((tokens[:length - 1] if cut[-1] else tokens) + [decoding.EOS_ID])
  return ids, np.array(cut, bool)


def _pad(ids: list[list[int]], length: int) -> np.ndarray:
  out = np.zeros((len(ids), length), np.int32)
  for i, row in enumerate(ids):
    out[i, :len(row)] = row
  return out


def encode(vocabulary, texts: list[str], length: int) -> np.ndarray:
  """[len(texts), length] token ids with EOS, cut as `tokenize` cuts them."""
  return _pad(tokenize(vocabulary, texts, length)[0], length)


def length_bucket(longest: int, cap: int | None = None) -> int:
  """The padded length of a batch whose longest row has `longest` tokens: powers of two from 64, then steps of
  512 past 1,024. Each function compiles once per bucket, and a batch of short prompts does not pay for the
  longest prompt of the task."""
  bucket = 64
  while bucket < longest:
    bucket = bucket * 2 if bucket < 1024 else bucket + 512
  return min(bucket, cap) if cap else bucket


def _batches(ids: list[list[int]], settings: Settings):
  """(input indices, [batch_size, bucket] encoder tokens) over the inputs, longest first, so each batch holds
  inputs of similar length; the last batch is padded with empty rows."""
  order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
  for start in range(0, len(order), settings.batch_size):
    rows = order[start:start + settings.batch_size]
    length = length_bucket(len(ids[rows[0]]), settings.inputs_length)
    yield rows, _pad_rows(_pad([ids[i] for i in rows], length), settings.batch_size)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  return np.pad(array, ((0, rows - array.shape[0]),) + ((0, 0),) * (array.ndim - 1))


def decode_tokens(vocabulary, tokens: np.ndarray) -> str:
  ids = [int(t) for t in tokens]
  if decoding.EOS_ID in ids:
    ids = ids[:ids.index(decoding.EOS_ID)]
  return vocabulary.decode(ids)


def _run(model: Model, fn, rows: list, shared: list = ()):
  """fn(params, *rows, *shared) as numpy: `rows` are [batch, ...] arrays (sharded over 'data' on a mesh),
  `shared` the same on every device."""
  if model.mesh is None:
    return jax.device_get(fn(model.params, *[jnp.asarray(a) for a in rows], *shared))
  from jax.experimental import multihost_utils
  mesh = model.mesh
  layout = partitioning.data_layout(mesh, rows[0].shape[0])
  mine = slice(layout.shard_index * layout.rows, (layout.shard_index + 1) * layout.rows)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  with jax.set_mesh(mesh), partitioning.axis_rules():
    out = fn(model.params, *[partitioning.global_array(a[mine], mesh, layout) for a in rows],
             *[jax.make_array_from_callback(x.shape, replicated, lambda index, x=x: x[index]) for x in shared])
  return multihost_utils.process_allgather(out, tiled=True)


def predict(model: Model, inputs: list[str], settings: Settings, progress=None) -> Output:
  """Generated text for each input (greedy, sampled or beam search, per settings); `progress` is a logs.Progress."""
  ids, inputs_cut = tokenize(model.vocabulary, inputs, settings.inputs_length)
  max_length = settings.max_decode_length or DEFAULT_DECODE_LENGTH
  rng = jax.random.key(settings.seed)
  texts, stopped, done = [""] * len(inputs), np.zeros(len(inputs), bool), 0
  for rows, batch in _batches(ids, settings):
    if settings.beam_size > 1:
      fn = lambda params, enc_tokens: decoding.beam_search(
          params, enc_tokens, config=model.config, max_length=max_length, beam_size=settings.beam_size,
          alpha=settings.alpha)
      tokens, _ = _run(model, fn, [batch])
    else:
      rng, key = jax.random.split(rng)
      key = np.asarray(jax.random.key_data(key))  # raw uint32, so it can be placed on any mesh
      fn = lambda params, enc_tokens, key: decoding.sample(
          params, enc_tokens, key, config=model.config, max_length=max_length, temperature=settings.temperature,
          top_k=settings.top_k, top_p=settings.top_p)
      tokens, _ = _run(model, fn, [batch], [key])
    for row, i in enumerate(rows):
      texts[i] = decode_tokens(model.vocabulary, tokens[row])
      stopped[i] = decoding.EOS_ID in tokens[row]
    done += len(rows)
    if progress:
      progress.update(done)
  return Output(texts, inputs_cut, ~stopped)


def _teacher_forcing(vocabulary, targets: list[str], length: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(decoder inputs, targets, which targets were cut): the target tokens and one EOS, cut to `length` as
  inputs are (None: as long as the longest target), and the same shifted right after 0."""
  ids, cut = tokenize(vocabulary, targets, length)
  tgt = _pad(ids, length or length_bucket(max(map(len, ids), default=1)))
  return np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1), tgt, cut


def score(model: Model, inputs: list[str], targets: list[str], settings: Settings, progress=None) -> Output:
  """Log-likelihood of each target (its tokens and EOS) given its input."""
  ids, inputs_cut = tokenize(model.vocabulary, inputs, settings.inputs_length)
  dec_in, tgt, targets_cut = _teacher_forcing(model.vocabulary, targets, settings.max_decode_length)
  fn = lambda params, enc, dec_in, tgt: decoding.score(params, enc, dec_in, tgt, config=model.config)
  out, done = [0.0] * len(inputs), 0
  for rows, batch in _batches(ids, settings):
    pad = lambda a: _pad_rows(a[rows], settings.batch_size)
    ll = _run(model, fn, [batch, pad(dec_in), pad(tgt)])
    for row, i in enumerate(rows):
      out[i] = float(ll[row])
    done += len(rows)
    if progress:
      progress.update(done)
  return Output(out, inputs_cut, targets_cut)


def score_options(model: Model, inputs: list[str], options: list[str], settings: Settings,
                  first_token: bool = False) -> Output:
  """[len(inputs), len(options)] log-likelihoods of every option after every input (rank classification): of
  its tokens and EOS, or (first_token) of its first token at the first decoder step only, as evaluate_flan.py
  compares the logits of A/B/C/D there. Each input is encoded once for all its options."""
  ids, inputs_cut = tokenize(model.vocabulary, inputs, settings.inputs_length)
  if first_token:
    firsts = [list(model.vocabulary.encode(o))[:1] for o in options]
    if any(not f for f in firsts) or len({f[0] for f in firsts}) < len(options):
      raise UserError(f"first-token scoring needs options whose first tokens differ: {options} give {firsts}")
    tgt, dec_in = np.array(firsts, np.int32), np.zeros((len(options), 1), np.int32)
  else:
    dec_in, tgt, _ = _teacher_forcing(model.vocabulary, options, None)
  fn = lambda params, enc, dec_in, tgt: decoding.score_options(params, enc, dec_in, tgt, config=model.config)
  out = np.zeros((len(inputs), len(options)))
  for rows, batch in _batches(ids, settings):
    out[rows] = _run(model, fn, [batch], [dec_in, tgt])[:len(rows)]
  return Output(list(out), inputs_cut, np.zeros(len(inputs), bool))


def read_jsonl(path: str) -> list[dict]:
  """Records with an 'inputs' string (and optional 'targets'); errors name the file and line."""

  def check(record):
    if not isinstance(record.get("inputs"), str):
      return "expected an object with a string 'inputs'"
    if "targets" in record and not isinstance(record["targets"], str):
      return "'targets' must be a string"
    return None

  return registration.read_records(path, check)

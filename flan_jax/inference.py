"""Text in, text (or log-likelihoods) out: tokenization, fixed-shape batches, decoding and scoring.

Inputs longer than `inputs_length` keep their last tokens (few-shot prompts end with the question).
Batches are padded to `batch_size` rows so each function compiles once. On a mesh, parameters are sharded by
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


@dataclasses.dataclass
class Settings:
  batch_size: int = 8
  inputs_length: int = 512
  max_decode_length: int = 128
  beam_size: int = 1          # >1: beam search
  alpha: float = 0.6          # beam search brevity penalty
  temperature: float = 0.0    # 0: greedy
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0


def encode(vocabulary, texts: list[str], length: int, keep_end: bool = True) -> np.ndarray:
  """[len(texts), length] token ids with EOS; too-long texts keep their end (or start) tokens."""
  out = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocabulary.encode(text)) + [decoding.EOS_ID]
    ids = ids[-length:] if keep_end else ids[:length - 1] + [decoding.EOS_ID]
    out[i, :len(ids)] = ids
  return out


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


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


def predict(model: Model, inputs: list[str], settings: Settings, progress=None) -> list[str]:
  """Generated text for each input (greedy, sampled or beam search, per settings); `progress` is a logs.Progress."""
  enc = encode(model.vocabulary, inputs, settings.inputs_length)
  rng = jax.random.key(settings.seed)
  out = []
  for start, end in _batches(len(inputs), settings.batch_size):
    batch = _pad_rows(enc[start:end], settings.batch_size)
    if settings.beam_size > 1:
      fn = lambda params, enc_tokens: decoding.beam_search(
          params, enc_tokens, config=model.config, max_length=settings.max_decode_length,
          beam_size=settings.beam_size, alpha=settings.alpha)
      tokens, _ = _run(model, fn, [batch])
    else:
      rng, key = jax.random.split(rng)
      key = np.asarray(jax.random.key_data(key))  # raw uint32, so it can be placed on any mesh
      fn = lambda params, enc_tokens, key: decoding.sample(
          params, enc_tokens, key, config=model.config, max_length=settings.max_decode_length,
          temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
      tokens, _ = _run(model, fn, [batch], [key])
    out += [decode_tokens(model.vocabulary, tokens[i]) for i in range(end - start)]
    if progress:
      progress.update(end)
  return out


def _teacher_forcing(vocabulary, targets: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
  """(decoder inputs, targets) [len(targets), length]: the target tokens with EOS, shifted right after 0."""
  tgt = encode(vocabulary, targets, length, keep_end=False)
  return np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1), tgt


def score(model: Model, inputs: list[str], targets: list[str], settings: Settings, progress=None) -> list[float]:
  """Log-likelihood of each target (its tokens and EOS) given its input."""
  enc = encode(model.vocabulary, inputs, settings.inputs_length)
  dec_in, tgt = _teacher_forcing(model.vocabulary, targets, settings.max_decode_length)
  fn = lambda params, enc, dec_in, tgt: decoding.score(params, enc, dec_in, tgt, config=model.config)
  out = []
  for start, end in _batches(len(inputs), settings.batch_size):
    pad = lambda a: _pad_rows(a[start:end], settings.batch_size)
    ll = _run(model, fn, [pad(enc), pad(dec_in), pad(tgt)])
    out += [float(x) for x in ll[:end - start]]
    if progress:
      progress.update(end)
  return out


def score_options(model: Model, inputs: list[str], options: list[str], settings: Settings) -> np.ndarray:
  """[len(inputs), len(options)] log-likelihoods of every option after every input (rank classification);
  each input is encoded once for all its options."""
  enc = encode(model.vocabulary, inputs, settings.inputs_length)
  dec_in, tgt = _teacher_forcing(model.vocabulary, options, settings.max_decode_length)
  fn = lambda params, enc, dec_in, tgt: decoding.score_options(params, enc, dec_in, tgt, config=model.config)
  out = []
  for start, end in _batches(len(inputs), settings.batch_size):
    out.append(_run(model, fn, [_pad_rows(enc[start:end], settings.batch_size)], [dec_in, tgt])[:end - start])
  return np.concatenate(out) if out else np.zeros((0, len(options)))


def read_jsonl(path: str) -> list[dict]:
  """Records with an 'inputs' string (and optional 'targets'); errors name the file and line."""

  def check(record):
    if not isinstance(record.get("inputs"), str):
      return "expected an object with a string 'inputs'"
    if "targets" in record and not isinstance(record["targets"], str):
      return "'targets' must be a string"
    return None

  return registration.read_records(path, check)

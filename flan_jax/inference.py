"""Text in, text (or log-likelihoods) out: tokenization, fixed-shape batches, decoding and scoring.

Inputs longer than `inputs_length` keep their last tokens (few-shot prompts end with the question).
Batches are padded to `batch_size` rows so each function compiles once.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from flan_jax import checkpoints, decoding
from flan_jax.data import registration
from flan_jax.errors import UserError
from flan_jax.models import T5Config
from flan_jax.vocab import byte_vocabulary, sentencepiece_vocabulary

EOS_ID = 1


@dataclasses.dataclass
class Model:
  """A checkpoint loaded for inference."""
  config: T5Config
  params: dict
  vocabulary: seqio.Vocabulary
  fingerprint: str | None = None


def load(checkpoint: str) -> Model:
  root, step, meta = checkpoints.read_meta(checkpoint)
  config = checkpoints.model_config(meta)
  params, _, _, _ = checkpoints.restore(os.path.join(root, str(step)))
  fingerprint = meta.get("vocabulary_fingerprint")
  if fingerprint and fingerprint.startswith("ByteVocabulary"):
    vocabulary = byte_vocabulary()
  else:
    path = checkpoints.vocabulary_path(root, meta)
    if not path:
      raise UserError(f"checkpoint {root}/{step} records no vocabulary")
    vocabulary = sentencepiece_vocabulary(path)
  return Model(config, jax.tree.map(jnp.asarray, params), vocabulary, fingerprint)


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
    ids = list(vocabulary.encode(text)) + [EOS_ID]
    ids = ids[-length:] if keep_end else ids[:length - 1] + [EOS_ID]
    out[i, :len(ids)] = ids
  return out


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  return np.pad(array, ((0, rows - array.shape[0]),) + ((0, 0),) * (array.ndim - 1))


def decode_tokens(vocabulary, tokens: np.ndarray) -> str:
  ids = [int(t) for t in tokens]
  if EOS_ID in ids:
    ids = ids[:ids.index(EOS_ID)]
  return vocabulary.decode(ids)


def predict(model: Model, inputs: list[str], settings: Settings, progress=None) -> list[str]:
  """Generated text for each input (greedy, sampled or beam search, per settings); `progress` is a logs.Progress."""
  enc = encode(model.vocabulary, inputs, settings.inputs_length)
  rng = jax.random.key(settings.seed)
  out = []
  for start, end in _batches(len(inputs), settings.batch_size):
    batch = jnp.asarray(_pad_rows(enc[start:end], settings.batch_size))
    if settings.beam_size > 1:
      tokens, _ = decoding.beam_search(model.params, batch, config=model.config, max_length=settings.max_decode_length,
                                       beam_size=settings.beam_size, alpha=settings.alpha)
    else:
      rng, key = jax.random.split(rng)
      tokens, _ = decoding.sample(model.params, batch, key, config=model.config,
                                  max_length=settings.max_decode_length, temperature=settings.temperature,
                                  top_k=settings.top_k, top_p=settings.top_p)
    tokens = np.asarray(tokens)
    out += [decode_tokens(model.vocabulary, tokens[i]) for i in range(end - start)]
    if progress:
      progress.update(end)
  return out


def score(model: Model, inputs: list[str], targets: list[str], settings: Settings, progress=None) -> list[float]:
  """Log-likelihood of each target (its tokens and EOS) given its input."""
  enc = encode(model.vocabulary, inputs, settings.inputs_length)
  tgt = encode(model.vocabulary, targets, settings.max_decode_length, keep_end=False)
  dec_in = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
  out = []
  for start, end in _batches(len(inputs), settings.batch_size):
    pad = lambda a: jnp.asarray(_pad_rows(a[start:end], settings.batch_size))
    ll = decoding.score(model.params, pad(enc), pad(dec_in), pad(tgt), config=model.config)
    out += [float(x) for x in np.asarray(ll)[:end - start]]
    if progress:
      progress.update(end)
  return out


def read_jsonl(path: str) -> list[dict]:
  """Records with an 'inputs' string (and optional 'targets'); errors name the file and line."""

  def check(record):
    if not isinstance(record.get("inputs"), str):
      return "expected an object with a string 'inputs'"
    if "targets" in record and not isinstance(record["targets"], str):
      return "'targets' must be a string"
    return None

  return registration.read_records(path, check)

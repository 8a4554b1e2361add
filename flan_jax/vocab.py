"""Vocabularies: T5's SentencePiece model through seqio, with 100 sentinel ids."""

import os

import gin
import seqio

from flan_jax.errors import UserError

T5_EXTRA_IDS = 100


@gin.configurable
def sentencepiece_vocabulary(path: str = gin.REQUIRED, extra_ids: int = T5_EXTRA_IDS) -> seqio.Vocabulary:
  """T5's vocabulary: 32000 pieces + 100 sentinels (<extra_id_0> = 32099); pad 0, eos 1, unk 2."""
  if not os.path.isfile(path):
    raise UserError(f"SentencePiece model not found: {path}")
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def check_fits(vocabulary: seqio.Vocabulary, model_vocab_size: int) -> None:
  """A vocabulary with more ids than the embedding table would index out of range silently in XLA."""
  if vocabulary.vocab_size > model_vocab_size:
    raise UserError(f"vocabulary has {vocabulary.vocab_size} ids but the model's embedding has only "
                    f"{model_vocab_size} rows (vocab mismatch)")


def byte_vocabulary() -> seqio.Vocabulary:
  """UTF-8 bytes (ids 3..258; pad 0, eos 1, unk 2): needs no file, for the offline demo."""
  return seqio.ByteVocabulary()


def fingerprint(vocabulary: seqio.Vocabulary) -> str:
  """Identifies a vocabulary's ids, so a checkpoint can refuse data tokenized differently."""
  import hashlib
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    digest = hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]
    return f"sentencepiece:{digest}+{vocabulary.extra_ids}"
  return f"{type(vocabulary).__name__}:{vocabulary.vocab_size}"

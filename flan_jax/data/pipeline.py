"""From a task or mixture name to batches of model features (seqio's EncDecFeatureConverter, packed)."""

import functools

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import collection
from flan_jax.data.preprocessors import unwrap_error
from flan_jax.data.registration import get_provider
from flan_jax.errors import UserError



@functools.cache
def keep_tensorflow_off_accelerators() -> None:
  """TF only feeds data: keep it off any GPU JAX uses (before TF first touches a device, hence once, early)."""
  try:
    if tf.config.get_visible_devices("GPU"):
      tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # the caller's TF already runs on its devices: its choice
    pass


def get_dataset(name: str, split: str, feature_lengths: dict, seed: int | None = 0, shuffle: bool = True,
                num_epochs: int | None = None, pack: bool = True, shard_info: seqio.ShardInfo | None = None,
                batch_size: int | None = None) -> tf.data.Dataset:
  """Model features for `name`; with batch_size, batched (remainder dropped, as training needs). Packed batches
  of the Flan 2022 collection's tasks come from its one stream (flan_jax.data.collection), not tf.data."""
  keep_tensorflow_off_accelerators()
  provider = get_provider(name)
  if split not in provider.splits:
    raise UserError(f"{name} has no split {split!r}; it has {sorted(provider.splits)}")
  if pack and batch_size:
    stream = collection.stream(name, feature_lengths, batch_size, seed, shuffle, shard_info, num_epochs)
    if stream is not None:
      return stream
  # seqio would cache small sources in memory; a tf.data checkpoint of that cache restores in time that grows
  # with the epochs read, so the training stream reads its (in-memory or TFDS) source directly.
  ds = provider.get_dataset(dict(feature_lengths), split=split, use_cached=False, shuffle=shuffle, seed=seed,
                            shard_info=shard_info, num_epochs=num_epochs, try_in_mem_cache=False)
  ds = seqio.EncDecFeatureConverter(pack=pack)(ds, task_feature_lengths=dict(feature_lengths))
  if batch_size:
    ds = ds.batch(batch_size, drop_remainder=True)
  return ds


def iterate(ds_or_iterator):
  """numpy batches from a dataset or its (checkpointable) iterator; a bad example raised inside tf.data comes
  out as the UserError it was."""
  it = iter(ds_or_iterator)
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      user_error = unwrap_error(e)
      if user_error:
        raise user_error from None
      raise
    yield tf.nest.map_structure(lambda t: t if isinstance(t, np.ndarray) else t.numpy(), batch)


def packing_efficiency(batches) -> dict:
  """Share of non-pad tokens in encoder inputs and decoder targets, and examples per row."""
  enc = dec = enc_total = dec_total = examples = rows = 0
  for batch in batches:
    enc += int(np.count_nonzero(batch["encoder_input_tokens"]))
    dec += int(np.count_nonzero(batch["decoder_target_tokens"]))
    enc_total += batch["encoder_input_tokens"].size
    dec_total += batch["decoder_target_tokens"].size
    seg = batch.get("decoder_segment_ids")
    rows += batch["decoder_target_tokens"].shape[0] if batch["decoder_target_tokens"].ndim == 2 else 1
    examples += int(seg.max(axis=-1).sum()) if seg is not None else rows
  if not rows:
    raise UserError("no batches to measure")
  return {"inputs": enc / enc_total, "targets": dec / dec_total, "examples_per_row": examples / rows}

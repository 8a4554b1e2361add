"""The seqio preprocessor that renders raw examples into Flan-formatted `inputs` / `targets` strings.

Rendering is Python (flan_jax.data.formats) run inside tf.data through `tf.numpy_function`. Each example's
format, template and exemplars come from a hash of the task name and the example itself, so an example is
rendered the same way whatever its position, epoch or host shard (a multi-host run sees exactly the examples
a single-host run does); the dataset seed still fixes the shuffled order.
"""

import json
import zlib

import numpy as np
import tensorflow as tf

from flan_jax.data import formats
from flan_jax.errors import UserError

# A UserError raised inside tf.data reaches Python wrapped in a TF error; this marker lets us unwrap it.
ERROR_MARK = "FLAN_JAX_USER_ERROR"


def flatten(features: dict, prefix: str = "") -> dict:
  """Nested feature dicts (TFDS's squad `answers/text`) as one level with '/'-joined keys."""
  flat = {}
  for key, value in features.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def to_python(value):
  """numpy values from tf.numpy_function (or tfds.as_numpy) as str, int, float or lists of them."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return to_python(value.item()) if value.ndim == 0 else [to_python(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def flan_preprocessor(task: str, templates: formats.FlanTemplates, to_fields, exemplar_pool):
  """A seqio preprocessor: raw examples -> {'inputs', 'targets'} in Flan's formats.

  `to_fields(raw: dict) -> dict` turns a raw example (flattened, decoded) into template fields;
  `exemplar_pool() -> list[dict]` gives the fields of candidate few-shot exemplars (same task, train split).
  Few-shot exemplars are dropped until the input fits `sequence_length['inputs']` tokens (EOS included).
  """

  def preprocess(dataset, sequence_length=None, output_features=None):
    keys = sorted(flatten(dataset.element_spec))
    pool = exemplar_pool() if "few_shot" in templates.formats() else []
    key = templates.exemplar_field
    by_key = {}
    for candidate in pool if key else ():
      by_key.setdefault(candidate.get(key), []).append(candidate)
    vocabulary = output_features["inputs"].vocabulary if output_features else None
    max_len = (sequence_length or {}).get("inputs")
    fits = ((lambda text: len(vocabulary.encode(text)) + 1 <= max_len) if vocabulary and max_len
            else (lambda text: True))

    def render(*values):
      try:
        fields = to_fields({k: to_python(v) for k, v in zip(keys, values)})
        rng = np.random.default_rng([zlib.crc32(task.encode()), zlib.crc32(json.dumps(fields, sort_keys=True).encode())])
        choice = formats.choose(rng, templates)
        exemplars = []
        candidates = by_key.get(fields.get(key), []) if key else pool
        if choice.format.startswith("few_shot") and candidates:
          picks = rng.choice(len(candidates), size=min(templates.num_shots + 1, len(candidates)), replace=False)
          exemplars = [candidates[i] for i in picks if candidates[i] != fields][:templates.num_shots]
        inputs, targets = formats.render(fields, templates, choice, exemplars, task, fits)
      except UserError as e:
        raise ValueError(f"{ERROR_MARK}<<{e}>>") from e
      return inputs.encode("utf-8"), targets.encode("utf-8")

    def fmt(ex):
      flat = flatten(ex)
      inputs, targets = tf.numpy_function(render, [flat[k] for k in keys], [tf.string, tf.string], stateful=False)
      return {"inputs": tf.ensure_shape(inputs, []), "targets": tf.ensure_shape(targets, [])}

    return dataset.map(fmt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return preprocess


def unwrap_error(error: Exception) -> UserError | None:
  """The UserError carried by a TF error from inside tf.data, if any."""
  text = str(error)
  if ERROR_MARK not in text:
    return None
  return UserError(text.split(f"{ERROR_MARK}<<", 1)[1].split(">>", 1)[0])

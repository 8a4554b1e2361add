"""What `flan-jax tasks list` and `tasks show` print: registered names with counts and rates, and examples
exactly as the model sees them (decoded from the tokens, after truncation)."""

import seqio

from flan_jax.data import collection, mixing
from flan_jax.data.pipeline import iterate
from flan_jax.data.registration import get_provider


def _examples(task: seqio.Task, split: str):
  try:
    return task.num_input_examples(split)
  except Exception:  # noqa: BLE001  (TFDS data not prepared: the count is unknown, not an error)
    return None


def list_lines() -> list[str]:
  lines = ["TASKS", f"{'name':50} splits (examples)"]
  for name in sorted(seqio.TaskRegistry.names()):
    task = seqio.TaskRegistry.get(name)
    try:
      counts = ", ".join(f"{s} {n if n is not None else '?'}" for s in task.splits for n in [_examples(task, s)])
    except ValueError:  # a TFDS source whose data is not prepared here
      counts = "data not available (prepare it with TFDS)"
    lines.append(f"{name:50} {counts}")
  lines += ["", "MIXTURES", f"{'name':50} tasks: rate (share)"]
  for name in sorted(seqio.MixtureRegistry.names()):
    try:
      rates = mixing.any_rates(name)
      total = sum(rates.values())
      parts = [f"{t}: {r:g} ({r / total:.1%})" for t, r in rates.items()]
    except Exception as e:  # noqa: BLE001
      count = len(seqio.MixtureRegistry.get(name).tasks)
      parts = [f"{count} tasks, rates unknown ({str(e).splitlines()[0]})"]
    lines.append(f"{name:50} " + "; ".join(parts))
  return lines


def show_lines(name: str, split: str, n: int, feature_lengths: dict, seed: int = 0) -> list[str]:
  provider = get_provider(name)
  stream = collection.stream(name, feature_lengths, 1, seed, num_epochs=1) if split == "train" else None
  if stream is not None:  # the Flan 2022 collection: its examples as the training stream keeps them
    lines = []
    for i, example in zip(range(n), stream.examples()):
      for key, text in zip(("inputs", "targets"), example):
        tokens = stream.tokenize([text], feature_lengths[key])[0]
        full = len(stream.vocabulary.encode(text)) + 1
        cut = f", truncated from {full}" if full > len(tokens) else ""
        lines += [f"--- example {i} {key} ({len(tokens)} tokens{cut}; {example[2]}, {example[3]})",
                  stream.vocabulary.decode(tokens)]
    return lines or [f"{name} split {split!r} has no examples"]
  keep_text = {"copy_pretokenized": True} if isinstance(provider, seqio.Mixture) else {}  # mixtures drop it
  ds = provider.get_dataset(feature_lengths, split=split, shuffle=False, seed=seed, num_epochs=1, **keep_text)
  vocabulary = provider.output_features["inputs"].vocabulary
  lines = []
  for i, ex in enumerate(iterate(ds.take(n))):
    for key in ("inputs", "targets"):
      tokens = [int(t) for t in ex[key]]
      full = len(vocabulary.encode(ex[f"{key}_pretokenized"].decode("utf-8"))) + 1
      cut = f", truncated from {full}" if full > len(tokens) else ""
      lines.append(f"--- example {i} {key} ({len(tokens)} tokens{cut})")
      lines.append(vocabulary.decode(tokens))
  if not lines:
    lines.append(f"{name} split {split!r} has no examples")
  return lines

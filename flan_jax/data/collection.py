"""The Flan 2022 collection (Chung et al. 2022; Longpre et al. 2023) from its published files, as seqio tasks and
mixtures capped and weighted as the paper's: `flan2022_<submix>_<task>` for each task name within each submix,
`flan2022_<submix>` for each submix (for CoT and Dialog, over `_base` and `_ii`, the input-inversion tasks), and
`flan2022` over them.

    register_flan_collection("gs://my-bucket/flan_collection", vocabulary)

Within a submix, a task's rate is its rows capped per template type: the sum over template types of
min(rows, the submix's cap). FLAN mixes each template type separately with these caps, then the template types of
a submix equally; both come to the same rates when every template type of a submix holds the same rows per
task. The rows are already formatted (zero-/few-shot, with or without options): they are only
tokenized.
"""

import re

import seqio

from flan_jax.data import collection_files
from flan_jax.data.mixing import add_mixture
from flan_jax.data.registration import _add, _tokenize_steps, output_features
from flan_jax.errors import UserError

ENV = "FLAN_JAX_FLAN_COLLECTION"  # the directory tasks/flan_collection.py registers from

# Per-task example caps, by submix: google-research/FLAN flan/v2/mixtures.py, DEFAULT_MIXTURE_MAX_EXAMPLES
# (FLAN 30k, T0 20k, CoT 100k, NIv2 5k, Dialog 200k); issue 29 cites them as the paper's Table 23.
CAPS = {"flan": 30_000, "t0": 20_000, "niv2": 5_000, "cot": 100_000, "dialog": 200_000}
# Submix weights: google-research/FLAN flan/v2/run_example.py, the mixture flan2022_submix.
WEIGHTS = {"flan": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}
# CoT and Dialog mix their input-inversion tasks (names ending in _ii) at 0.3 against 1 for the rest:
# google-research/FLAN flan/v2/mixtures.py, DEFAULT_MIXTURE_RATES ('CoT-II', 'Dialog-II'); same caps.
INVERSION_WEIGHTS = {"cot": 0.3, "dialog": 0.3}


class CollectionSource(seqio.DataSource):
  """One task's rows in the collection's files. Its shards are the files that hold some, so seqio splits them
  across hosts by file where there are enough files, else by example."""

  def __init__(self, task: str, rows: collection_files.TaskRows):
    super().__init__(splits=["train"], num_input_examples={"train": sum(rows.counts.values())},
                     caching_permitted=False)
    self._task, self._files = task, rows.files

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> list[str]:
    return list(self._files)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                  num_epochs=1):
    del sequence_length, use_cached, num_epochs
    paths = list(self._files)
    if shard_info:
      paths = paths[shard_info.index::shard_info.num_shards]
    return collection_files.task_rows(self._task, {p: self._files[p] for p in paths}, shuffle, seed)


def task_rate(rows: collection_files.TaskRows, cap: int) -> int:
  """The rows a task is mixed by: capped per template type."""
  return sum(min(n, cap) for n in rows.counts.values())


def _safe(name: str) -> str:
  return re.sub(r"\W+", "_", name).strip("_").lower()


def register_flan_collection(directory: str, vocabulary: seqio.Vocabulary, prefix: str = "flan2022") -> list[str]:
  """Register the collection's files under `directory` (local or gs://); returns the mixture names."""
  submixes = []
  for submix, tasks in collection_files.index(directory).items():
    if not tasks:
      continue
    components, inverted, seen = [], [], {}
    for task, rows in sorted(tasks.items()):
      name = f"{prefix}_{submix}_{_safe(task)}"
      if name in seen:
        raise UserError(f"{directory}: tasks {seen[name]!r} and {task!r} of {submix} would both be named {name}")
      seen[name] = task
      _add(name, source=CollectionSource(task, rows), output_features=output_features(vocabulary),
           preprocessors=_tokenize_steps())
      group = inverted if submix in INVERSION_WEIGHTS and task.endswith("_ii") else components
      group.append((name, task_rate(rows, CAPS[submix])))
    mixture = f"{prefix}_{submix}"
    if inverted and components:
      add_mixture(f"{mixture}_base", components)
      add_mixture(f"{mixture}_ii", inverted)
      add_mixture(mixture, [(f"{mixture}_base", 1.0), (f"{mixture}_ii", INVERSION_WEIGHTS[submix])])
    else:
      add_mixture(mixture, components + inverted)
    submixes.append((mixture, WEIGHTS[submix]))
  add_mixture(prefix, submixes)
  return [prefix] + [m for m, _ in submixes]

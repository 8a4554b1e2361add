"""The Flan 2022 collection (Chung et al. 2022; Longpre et al. 2023) from its published files, as seqio tasks and
mixtures capped and weighted as the paper's: `flan2022_<submix>_<task>` for each task name within each submix,
`flan2022_<submix>` for each submix (for CoT and Dialog, over `_base` and `_ii`, the input-inversion tasks), and
`flan2022` over them.

    register_flan_collection("gs://my-bucket/flan_collection", vocabulary)

Rates are FLAN's: within a submix, each template type (zs_opt, fs_noopt, ...) mixes its tasks by rows capped at
the submix's cap, min(rows, cap); the template types of a submix mix equally; CoT and Dialog mix their
input-inversion tasks (`_ii`) apart, at 0.3 against 1; the submixes by WEIGHTS. A unit (task, template type)
thus has a rate, UNIT_RATES[mixture] keeps them, and a task's rate in a seqio mixture is the sum over its
template types. Training on these mixtures reads the files in one stream (flan_jax.data.collection_stream).
The rows are already formatted (zero-/few-shot, with or without options): they are only tokenized.
"""

import collections
import re

import seqio

from flan_jax.data import collection_files
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
UNIT_RATES: dict[str, dict] = {}  # mixture -> {(task name as in the files, template type): rate}


class CollectionSource(seqio.DataSource):
  """One task's rows in the collection's files. Its shards are the files that hold some, so seqio splits them
  across hosts by file where there are enough files, else by example."""

  def __init__(self, task: str, rows: collection_files.TaskRows, collection: collection_files.Collection):
    super().__init__(splits=["train"], num_input_examples={"train": sum(rows.counts.values())},
                     caching_permitted=False)
    self._files = rows.files
    self.task, self.collection = task, collection  # the collection's stream reads tasks by these
    self.template_shares = {}  # template type -> its share of the task's rate in FLAN's mixing

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
    return collection_files.task_rows(self.task, {p: self._files[p] for p in paths}, shuffle, seed)


def submix_rates(submix: str, tasks: dict[str, collection_files.TaskRows]) -> dict:
  """{(task, template type): rate} within one submix, summing to 1."""
  groups, weights = [sorted(tasks)], [1.0]
  inverted = [t for t in groups[0] if t.endswith("_ii")]
  if submix in INVERSION_WEIGHTS and inverted and len(inverted) < len(tasks):  # CoT and Dialog mix them apart
    groups, weights = [[t for t in groups[0] if t not in inverted], inverted], [1.0, INVERSION_WEIGHTS[submix]]
  out = {}
  for group, weight in zip(groups, weights):
    share = weight / sum(weights)
    types = sorted({tt for t in group for tt in tasks[t].counts})
    for template_type in types:
      capped = {t: min(tasks[t].counts.get(template_type, 0), CAPS[submix]) for t in group}
      total = sum(capped.values())
      for t, n in capped.items():
        if n:
          out[(t, template_type)] = share / len(types) * n / total
  return out


def _add_mixture(name: str, units: dict, task_names: dict) -> None:
  """A seqio mixture of the tasks of `units` at the sum of their units' rates."""
  rates = {}
  for (task, _), rate in units.items():
    rates[task_names[task]] = rates.get(task_names[task], 0.0) + rate
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, sorted(rates.items()))
  UNIT_RATES[name] = units


def _safe(name: str) -> str:
  return re.sub(r"\W+", "_", name).strip("_").lower()


def register_flan_collection(directory: str, vocabulary: seqio.Vocabulary, prefix: str = "flan2022") -> list[str]:
  """Register the collection's files under `directory` (local or gs://); returns the mixture names."""
  collection = collection_files.Collection.index(directory)
  everything, mixtures, names, task_of = {}, [], {}, {}
  for submix, tasks in collection.tasks.items():
    if not tasks:
      continue
    units = submix_rates(submix, tasks)
    shares = collections.defaultdict(dict)  # task -> template type -> its rate
    for (task, template_type), rate in units.items():
      shares[task][template_type] = rate
    for task, rows in sorted(tasks.items()):
      name = f"{prefix}_{submix}_{_safe(task)}"
      if name in task_of:
        raise UserError(f"{directory}: tasks {task_of[name]!r} and {task!r} of {submix} would both be named {name}")
      names[task], task_of[name] = name, task
      source = CollectionSource(task, rows, collection)
      source.template_shares = {tt: r / sum(shares[task].values()) for tt, r in shares[task].items()}
      _add(name, source=source, output_features=output_features(vocabulary), preprocessors=_tokenize_steps())
    mixture = f"{prefix}_{submix}"
    if submix in INVERSION_WEIGHTS and any(t.endswith("_ii") for t in tasks) and \
        not all(t.endswith("_ii") for t in tasks):
      for part, keep in (("base", lambda t: not t.endswith("_ii")), ("ii", lambda t: t.endswith("_ii"))):
        part_units = {u: r for u, r in units.items() if keep(u[0])}
        total = sum(part_units.values())
        _add_mixture(f"{mixture}_{part}", {u: r / total for u, r in part_units.items()}, names)
    _add_mixture(mixture, units, names)
    everything.update({u: WEIGHTS[submix] * r for u, r in units.items()})
    mixtures.append(mixture)
  _add_mixture(prefix, everything, names)
  return [prefix] + mixtures


def stream(name: str, feature_lengths: dict, batch_size: int, seed: int | None = 0, shuffle: bool = True,
           shard_info: seqio.ShardInfo | None = None, num_epochs: int | None = None):
  """The packed batches of a task or mixture of one collection's tasks as one stream, or None when `name` has
  other tasks (seqio's pipelines read those)."""
  from flan_jax.data import collection_stream
  provider = seqio.get_mixture_or_task(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  sources = [t.source for t in tasks]
  if not all(isinstance(s, CollectionSource) for s in sources) or len({id(s.collection) for s in sources}) > 1:
    return None
  if name in UNIT_RATES:
    units = UNIT_RATES[name]
  else:  # any other mixture of its tasks (findings' task subsets, a user's): each task's template types as FLAN's
    rates = {t: float(provider.get_rate(t)) for t in tasks} if isinstance(provider, seqio.Mixture) else {provider: 1.0}
    units = {(t.source.task, tt): rate * share for t, rate in rates.items()
             for tt, share in t.source.template_shares.items()}
  shard = shard_info or seqio.ShardInfo(0, 1)
  return collection_stream.Stream(units, sources[0].collection.files, provider.output_features["inputs"].vocabulary,
                                  feature_lengths, batch_size, seed or 0, shard.index, shard.num_shards,
                                  num_epochs, shuffle)

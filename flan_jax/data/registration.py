"""Registering SeqIO tasks: Flan-templated tasks over any source, over a user's JSONL/TSV files, and
fixed-prompt tasks (held-out evaluation) whose inputs are already written."""

import csv
import difflib
import functools
import json
import os

import gin
import seqio
import tensorflow as tf

from flan_jax.data import formats
from flan_jax.data.preprocessors import flan_preprocessor
from flan_jax.data.protocol import Protocol
from flan_jax.errors import UserError

POOL_SIZE = 64  # candidate few-shot exemplars kept per task



def output_features(vocabulary: seqio.Vocabulary) -> dict:
  return {"inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def _add(name: str, **kwargs) -> seqio.Task:
  """Register (replacing a task of the same name, so re-imports and tests can re-register)."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def _tokenize_steps():
  return [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]


def register_flan_task(name: str, source: seqio.DataSource, templates: formats.FlanTemplates, to_fields,
                       vocabulary: seqio.Vocabulary, exemplar_pool, metric_fns=(), postprocess_fn=None) -> seqio.Task:
  """A task whose raw examples are rendered by Flan templates, then tokenized with EOS."""
  return _add(name, source=source, output_features=output_features(vocabulary),
              preprocessors=[flan_preprocessor(name, templates, to_fields, exemplar_pool)] + _tokenize_steps(),
              metric_fns=list(metric_fns), postprocess_fn=postprocess_fn)


# --- records in memory (local files, generated data, held-out prompts) ---

def records_source(records_by_split: dict) -> seqio.FunctionDataSource:
  """A data source over in-memory dict records; each travels as one JSON string feature."""

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # seqio shuffles examples after the source
    lines = [json.dumps(r) for r in records_by_split[split]]
    return tf.data.Dataset.from_tensor_slices({"json": tf.constant(lines, tf.string)})

  return seqio.FunctionDataSource(dataset_fn, splits=list(records_by_split),
                                  num_input_examples={k: len(v) for k, v in records_by_split.items()})


def from_json_feature(raw: dict) -> dict:
  return json.loads(raw["json"])


def register_records_task(name: str, records_by_split: dict, templates: formats.FlanTemplates,
                          vocabulary: seqio.Vocabulary, to_fields=lambda r: r, pool_split: str = "train",
                          metric_fns=(), postprocess_fn=None, pool_size: int = POOL_SIZE) -> seqio.Task:
  """A Flan task over in-memory records; `to_fields` maps a record to template fields; few-shot exemplars come
  from the first `pool_size` records of `pool_split`."""
  for split, records in records_by_split.items():
    if not records:
      raise UserError(f"task {name}: split {split!r} has no examples")
  pool_records = records_by_split.get(pool_split) or next(iter(records_by_split.values()))
  pool = functools.lru_cache(None)(lambda: [to_fields(r) for r in pool_records[:pool_size]])
  return register_flan_task(name, records_source(records_by_split), templates,
                            lambda raw: to_fields(from_json_feature(raw)), vocabulary, pool, metric_fns,
                            postprocess_fn)


def read_records(path: str, check=None) -> list[dict]:
  """Records of a .jsonl file (one JSON object a line) or a .tsv file with a header row. `check(record)`
  may return a complaint about a record, reported with its file and line."""
  if not os.path.isfile(path):
    raise UserError(f"data file not found: {path}")
  records = []
  with open(path, encoding="utf-8") as f:
    if path.endswith(".tsv"):
      reader = csv.DictReader(f, delimiter="\t")
      for line_no, row in enumerate(reader, start=2):
        if None in row or None in row.values():
          raise UserError(f"{path}:{line_no}: expected {len(reader.fieldnames)} tab-separated columns")
        records.append(row)
    else:
      for line_no, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f"{path}:{line_no}: malformed JSON line ({e.msg})") from e
        if not isinstance(record, dict):
          raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        complaint = check(record) if check else None
        if complaint:
          raise UserError(f"{path}:{line_no}: {complaint}")
        records.append(record)
  if not records:
    raise UserError(f"{path}: empty file (no examples)")
  return records


def register_file_task(name: str, files: dict, templates, vocabulary: seqio.Vocabulary,
                       to_fields=lambda r: r, pool_split: str = "train", metric_fns=()) -> seqio.Task:
  """One call for a user's own data: `files` maps split -> .jsonl/.tsv path; `templates` is a
  FlanTemplates, or one (inputs, targets) pair / a list of pairs with {field} placeholders.

      register_file_task("my_qa", {"train": "qa.jsonl"}, ("Question: {q}", "{a}"), vocabulary)
  """
  if isinstance(templates, tuple) and len(templates) == 2 and all(isinstance(t, str) for t in templates):
    templates = [templates]
  if not isinstance(templates, formats.FlanTemplates):
    templates = formats.FlanTemplates(templates=tuple(formats.Template(*t) for t in templates))
  records = {split: read_records(path) for split, path in files.items()}
  return register_records_task(name, records, templates, vocabulary, to_fields, pool_split, metric_fns)


# How each held-out task is scored (flan_jax.data.protocol); tasks not listed are generated and judged by answer.
PROTOCOLS: dict[str, Protocol] = {}


def register_prompt_task(name: str, records_by_split: dict, vocabulary: seqio.Vocabulary, metric_fns=(),
                         postprocess_fn=None, protocol: Protocol | None = None) -> seqio.Task:
  """A task whose records already hold `inputs` and `targets`: held-out evaluation prompts such as MMLU
  5-shot or BBH, which must not vary by template. `protocol` says how evaluation scores it."""
  PROTOCOLS.pop(name, None)  # re-registering a name forgets what the old task had
  if protocol:
    PROTOCOLS[name] = protocol

  def decode(dataset):
    def to_strings(line):
      record = json.loads(line.decode("utf-8"))
      return record["inputs"].encode("utf-8"), record["targets"].encode("utf-8")

    def fn(ex):
      inputs, targets = tf.numpy_function(to_strings, [ex["json"]], [tf.string, tf.string], stateful=False)
      return {"inputs": tf.ensure_shape(inputs, []), "targets": tf.ensure_shape(targets, [])}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return _add(name, source=records_source(records_by_split), output_features=output_features(vocabulary),
              preprocessors=[decode] + _tokenize_steps(), metric_fns=list(metric_fns),
              postprocess_fn=postprocess_fn)


# The repository's tasks/ folder is installed as the package flan_jax_tasks. Each of its modules registers the names
# that start with its prefix, so a command imports only the module it needs (TFDS and the held-out files are slow).
BUILTIN_TASK_MODULES = {"demo_": "flan_jax_tasks.demo", "shared_": "flan_jax_tasks.shared_data",
                        "mmlu": "flan_jax_tasks.held_out", "bbh": "flan_jax_tasks.held_out",
                        "mgsm": "flan_jax_tasks.mgsm", "flan_": "flan_jax_tasks.flan_tfds",
                        "flan2022": "flan_jax_tasks.flan_collection"}


def _registered(name: str) -> bool:
  return name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names()


def import_builtin_tasks(name: str | None = None) -> None:
  """Import the built-in task module that registers `name`, or (no name) all of them."""
  import importlib
  for prefix, module in BUILTIN_TASK_MODULES.items():
    if name is None or name.startswith(prefix):
      with gin.unlock_config():  # task modules may register gin configurables after the config is parsed
        importlib.import_module(module)


def get_provider(name: str):
  """The registered task or mixture `name`; an unknown name lists the closest registered ones."""
  if not _registered(name):
    import_builtin_tasks(name)
  if _registered(name):
    return seqio.get_mixture_or_task(name)
  import_builtin_tasks()
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = f"; closest: {', '.join(close)}" if close else f"; {len(known)} registered (flan-jax tasks list)"
  if name.startswith("flan2022") and not os.environ.get("FLAN_JAX_FLAN_COLLECTION"):
    hint = "; the Flan 2022 collection registers from the folder named by $FLAN_JAX_FLAN_COLLECTION, which is unset"
  raise UserError(f"unknown task or mixture {name!r}{hint}")


def import_task_modules(modules=()) -> None:
  """Import a user's modules that register tasks (t5x's MIXTURE_OR_TASK_MODULE); a missing one is a UserError.
  The current directory is searched too, so `--module my_tasks` finds ./my_tasks.py."""
  import importlib
  import sys
  if os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  for module in modules:
    if not module:
      continue
    try:
      with gin.unlock_config():  # task modules may register gin configurables after the config is parsed
        importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name and module.startswith(e.name):
        raise UserError(f"task module {module!r} not found") from e
      raise

"""The `flan-jax` command: one entry point, one subcommand per job.

Bad input (UserError) prints one line `flan-jax: error: ...` and exits 2, with no traceback; a crash exits 1; a
preempted `train` (SIGTERM) exits 75 once its step is saved (flan_jax/preemption.py): run the same command again.
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import NoReturn

from flan_jax import hugepages
from flan_jax.errors import UserError
from flan_jax.preemption import EXIT_CODE as PREEMPTED, Preempted


def _import_hf(args):
  from flan_jax import hf
  out = hf.import_hf(args.hf, args.out, vocabulary=args.vocab)
  print(f"wrote checkpoint {out}")


def _import_t5x(args):
  from flan_jax import gin_utils, t5x
  gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths, finalize=False)
  out = t5x.import_t5x(args.checkpoint, args.out, vocabulary=args.vocab,
                       with_optimizer_state=args.with_optimizer_state)
  print(f"wrote checkpoint {out}")


def _export_t5x(args):
  from flan_jax import gin_utils, t5x
  gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths, finalize=False)
  out = t5x.export_t5x(args.checkpoint, args.out, with_optimizer_state=args.with_optimizer_state)
  print(f"wrote T5X checkpoint {out}")


def _mesh(args):
  """The mesh from `--gin.make_mesh.*` flags, as in train (default: data-parallel over all devices)."""
  from flan_jax import gin_utils, partitioning
  gin_utils.parse([], args.gin_bindings)
  return partitioning.make_mesh()


def _export_hf(args):
  from flan_jax import hf, peft_folder
  _start_processes(args)
  if args.adapter:
    print(f"wrote peft adapter folder {peft_folder.export_peft(args.checkpoint, args.out, args.base)}")
    return
  out = hf.export_hf(args.checkpoint, args.out, _mesh(args), merge=args.merge)
  print(f"wrote HuggingFace folder {out}")


def _import_peft(args):
  from flan_jax import peft_folder
  print(f"wrote checkpoint {peft_folder.import_peft(args.adapter, args.base, args.out)}")


def _settings(args):
  from flan_jax.inference import Settings
  return Settings(batch_size=args.batch_size, inputs_length=args.inputs_length,
                  max_decode_length=args.max_decode_length, beam_size=args.beam_size, alpha=args.alpha,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _progress(label: str, total: int):
  from flan_jax import logs
  return logs.Progress(0, total, 5.0, _stderr, label=label, unit="examples")


def _infer(args):
  import json

  import jax

  from flan_jax import evaluation, inference
  from flan_jax.data import registration
  registration.import_task_modules(args.module)
  if bool(args.task) == bool(args.input):
    raise UserError("infer needs exactly one of --task NAME or --input FILE.jsonl")
  _start_processes(args)
  model = inference.load(args.checkpoint, _mesh(args))
  if args.task:
    records = []
    for _, tasks in evaluation.expand([args.task]):
      for task in tasks:
        _, rows = evaluation.examples(task, args.split, args.max_examples)
        records += [{"task": task, "inputs": i, "targets": t} for i, t in rows]
  else:
    records = inference.read_jsonl(args.input)[:args.max_examples or None]
  if args.mode == "score" and any("targets" not in r for r in records):
    raise UserError("score mode needs a 'targets' string in every record")
  settings = _settings(args)
  inputs = [r["inputs"] for r in records]
  if args.mode == "predict":
    out = inference.predict(model, inputs, settings, _progress("predict", len(inputs)))
    length = settings.max_decode_length or inference.DEFAULT_DECODE_LENGTH
    key, stopped = "prediction", f"answers stopped at {length} tokens (--max_decode_length)"
  else:
    out = inference.score(model, inputs, [r["targets"] for r in records], settings, _progress("score", len(inputs)))
    key, stopped = "log_likelihood", f"targets longer than {settings.max_decode_length} tokens cut (--max_decode_length)"
  inputs_cut = f"inputs longer than {settings.inputs_length} tokens cut to their start (--inputs_length)"
  for count, what in ((out.inputs_cut.sum(), inputs_cut), (out.answers_cut.sum(), stopped)):
    if count:
      _stderr(f"infer: {count} of {len(records)} {what} (marked in the output)")
  if jax.process_index() == 0:  # every process ran every batch on the shared mesh and has every result
    output = args.output
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output + ".tmp", "w") as f:
      for i, (record, value) in enumerate(zip(records, out.values)):
        cut = {k: True for k in ("inputs_cut", "answers_cut") if getattr(out, k)[i]}
        f.write(json.dumps({**record, key: value, **cut}) + "\n")
    os.replace(output + ".tmp", output)
    print(f"wrote {len(records)} records to {output}")


def _eval(args):
  import json

  import jax

  from flan_jax import evaluation, inference, suite
  from flan_jax.data import registration
  if bool(args.suite) == bool(args.tasks):
    raise UserError("eval needs --tasks NAME... or --suite flan (not both)")
  if args.suite and args.split:
    raise UserError("--suite runs every benchmark on the paper's split; drop --split")
  if args.tydiqa and not args.suite:
    raise UserError("--tydiqa belongs to --suite flan")
  registration.import_task_modules(args.module)
  _start_processes(args)
  model = inference.load(args.checkpoint, _mesh(args))
  if args.suite:
    results = suite.run(model, _settings(args), args.max_examples, args.tydiqa, log_fn=_stderr)
  else:
    results = evaluation.evaluate(model, args.tasks, _settings(args), args.split, args.max_examples,
                                  log_fn=_stderr)
  if jax.process_index():  # every process evaluated everything; process 0 reports
    return
  print(suite.table(results) if args.suite else evaluation.table(results))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {args.output}")


def _model_info(args):
  """Parameter count of a gin-configured model, and one forward/backward pass on random tokens."""
  import time

  import jax
  import jax.numpy as jnp
  import flax.linen as nn

  from flan_jax import gin_utils
  from flan_jax.models import T5, T5Config
  from flan_jax.models.t5 import init_variables, param_count

  gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)
  config = T5Config()
  print(f"parameters: {param_count(config):,}")
  if args.no_forward:
    return
  rng = jax.random.key(0)
  params = nn.unbox(init_variables(config, rng))["params"]
  tokens = jax.random.randint(rng, (args.batch, args.length), 2, min(config.vocab_size, 32100))
  features = dict(encoder_input_tokens=tokens, decoder_input_tokens=jnp.pad(tokens[:, :-1], ((0, 0), (1, 0))),
                  decoder_target_tokens=tokens)

  def loss_fn(p):
    logits = T5(config).apply({"params": p}, **features)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))

  start = time.time()
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  grad_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
  print(f"forward/backward on random tokens {args.batch}x{args.length}: loss {float(loss):.4f} "
        f"(ln vocab = {jnp.log(config.vocab_size):.4f}), grad norm {float(grad_norm):.4f}, "
        f"{time.time() - start:.1f}s with compilation")


def _start_processes(args):
  from flan_jax import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  _find_devices()


def _train(args):
  from flan_jax import gin_utils, train
  gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)
  _start_processes(args)
  train.train()


def _findings(args):
  from flan_jax import findings, gin_utils
  import flan_jax.train  # noqa: F401  (registers train's gin configurable before the files are parsed)
  gin_files = (args.gin_file or ["runs/findings.gin"]) + (["runs/findings_quick.gin"] if args.quick else [])
  gin_utils.parse(gin_files, args.gin_bindings, args.gin_search_paths)
  _find_devices()
  findings.sweep(args.out)


def _plan(args):
  from flan_jax import gin_utils, plan
  import flan_jax.train  # noqa: F401  (registers train's gin configurable before the files are parsed)
  gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths, finalize=False)
  if not args.topology:
    raise UserError("plan needs at least one --topology, e.g. --topology v5e-64")
  plan.plan(args.topology, auto=args.mesh == "auto")


def _tasks(args):
  from flan_jax.data import listing, registration
  registration.import_task_modules(args.module)
  if args.action == "list":
    registration.import_builtin_tasks()
    lines = listing.list_lines()
  else:
    if not args.name:
      raise UserError("tasks show needs a task or mixture NAME")
    lines = listing.show_lines(args.name, args.split, args.n, {"inputs": args.inputs_length,
                                                               "targets": args.targets_length})
  print("\n".join(lines))


def _number(kind, low=None, high=None, low_open=False):
  """An argparse type: `kind` within [low, high] ((low, high] with low_open), else a usage error naming the range."""
  def parse(text):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
      bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
      raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
    return value
  return parse


def _add_process_flags(p):
  p.add_argument("--coordinator_address", help="multi-process: host:port of process 0 (see flan_jax.distributed)")
  p.add_argument("--num_processes", type=_number(int, 1))
  p.add_argument("--process_id", type=_number(int, 0))


def _add_gin_flags(p):
  p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  p.add_argument("--gin_search_paths", action="append", default=[], help="folders to look for gin files in")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="flan-jax", description="Flan-style instruction finetuning of T5 in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("import-hf", help="convert a HuggingFace T5 folder into a flan-jax checkpoint")
  p.add_argument("--hf", required=True, help="folder with config.json, model.safetensors, spiece.model")
  p.add_argument("--out", required=True, help="new checkpoint directory")
  p.add_argument("--vocab", help="spiece.model to use when the HF folder has none")
  p.set_defaults(run=_import_hf)

  p = sub.add_parser("export-hf", help="write a flan-jax checkpoint as a HuggingFace T5 folder")
  p.add_argument("--checkpoint", required=True, help="checkpoint directory (its latest step) or one step's directory")
  p.add_argument("--out", required=True, help="new HuggingFace folder")
  lora_mode = p.add_mutually_exclusive_group()
  lora_mode.add_argument("--adapter", action="store_true",
                         help="LoRA checkpoint: a peft adapter folder (adapter_config.json, adapter_model.safetensors)")
  lora_mode.add_argument("--merge", action="store_true", help="LoRA checkpoint: the model with the adapters folded in")
  p.add_argument("--base", help="with --adapter: base_model_name_or_path to record (default: the base checkpoint)")
  _add_process_flags(p)
  p.set_defaults(run=_export_hf)

  p = sub.add_parser("import-peft", help="a peft LoRA adapter folder on a flan-jax base as a LoRA checkpoint")
  p.add_argument("--adapter", required=True, help="folder with adapter_config.json and adapter_model.safetensors")
  p.add_argument("--base", required=True, help="the flan-jax checkpoint of the base model the adapter was made for")
  p.add_argument("--out", required=True, help="new checkpoint directory")
  p.set_defaults(run=_import_peft)

  p = sub.add_parser("import-t5x", help="convert a T5X checkpoint (checkpoint_<step>/) into a flan-jax checkpoint")
  p.add_argument("--checkpoint", required=True, help="a T5X checkpoint_<step> directory (local or gs://)")
  p.add_argument("--out", required=True, help="new checkpoint directory")
  p.add_argument("--vocab", help="spiece.model the T5X run used (T5X checkpoints do not hold it)")
  p.add_argument("--with_optimizer_state", action="store_true",
                 help="also convert t5x's Adafactor state, to continue the t5x run with flan-jax train")
  _add_gin_flags(p)
  p.set_defaults(run=_import_t5x)

  p = sub.add_parser("export-t5x", help="write a flan-jax checkpoint as a T5X checkpoint_<step>/ directory")
  p.add_argument("--checkpoint", required=True, help="checkpoint directory (its latest step) or one step's directory")
  p.add_argument("--out", required=True, help="directory to write checkpoint_<step>/ into")
  p.add_argument("--with_optimizer_state", action="store_true", help="write the Adafactor state too")
  _add_gin_flags(p)
  p.set_defaults(run=_export_t5x)

  for name, help_text in (("infer", "predict or score over a task/mixture split or a JSONL file"),
                          ("eval", "held-out evaluation (MMLU, BBH, any task, or the Flan paper's suite) "
                                   "as a table and JSON")):
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default=None, help="default: validation, else test")
    p.add_argument("--max_examples", type=_number(int, 1), default=None)
    p.add_argument("--module", action="append", default=[], help="extra module registering tasks (repeatable)")
    p.add_argument("--batch_size", type=_number(int, 1), default=8)
    p.add_argument("--inputs_length", type=_number(int, 1), default=None,
                   help="cut longer inputs to their first tokens, counted (default: eval, the task's protocol; "
                        "infer, never cut)")
    p.add_argument("--max_decode_length", type=_number(int, 1), default=None,
                   help="default: eval, the task's protocol; infer, 128 (answers it stops are counted)")
    p.add_argument("--beam_size", type=_number(int, 1), default=1, help="1: greedy or sampling; >1: beam search")
    p.add_argument("--alpha", type=_number(float, 0), default=0.6, help="beam search brevity penalty")
    p.add_argument("--temperature", type=_number(float, 0), default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=_number(int, 0), default=0, help="0: no limit")
    p.add_argument("--top_p", type=_number(float, 0, 1, low_open=True), default=1.0)
    p.add_argument("--seed", type=int, default=0)
    _add_process_flags(p)
    if name == "infer":
      p.add_argument("--task", help="task or mixture name")
      p.add_argument("--input", help='JSONL with {"inputs": ...} (and "targets" to score)')
      p.add_argument("--mode", choices=["predict", "score"], default="predict")
      p.add_argument("--output", required=True, help="JSONL to write")
      p.set_defaults(run=_infer)
    else:
      p.add_argument("--tasks", nargs="+", help="tasks or mixtures, e.g. mmlu bbh_cot")
      p.add_argument("--suite", choices=["flan"],
                     help="flan: the Flan paper's held-out suite (its Table 5): MMLU direct and CoT, BBH direct and "
                          "CoT, MGSM, TyDi QA (with --tydiqa) and the normalized average, beside the paper's "
                          "Flan-T5 row of the checkpoint's size; each benchmark on the paper's split")
      p.add_argument("--tydiqa", help="with --suite flan: the official TyDi QA GoldP dev JSON "
                                      "(tydiqa-goldp-v1.1-dev.json); without it TyDi QA is skipped")
      p.add_argument("--output", help="JSON file for the results")
      p.set_defaults(run=_eval)

  p = sub.add_parser("model-info", help="parameter count and a forward/backward pass of a gin-configured model")
  _add_gin_flags(p)
  p.add_argument("--batch", type=_number(int, 1), default=2)
  p.add_argument("--length", type=_number(int, 1), default=32)
  p.add_argument("--no_forward", action="store_true", help="only count parameters (no allocation)")
  p.set_defaults(run=_model_info)

  p = sub.add_parser("train", help="gin-configured Flan finetuning (resumes from MODEL_DIR)")
  _add_gin_flags(p)
  _add_process_flags(p)
  p.set_defaults(run=_train)

  p = sub.add_parser("findings", help="the Flan paper's three findings (task count, model size, chain of thought); "
                                      "default gin file runs/findings.gin (the demo's rule family)")
  _add_gin_flags(p)
  p.add_argument("--out", default="runs/findings", help="output directory (re-running skips the points done)")
  p.add_argument("--quick", action="store_true", help="a few steps a point (adds runs/findings_quick.gin): a check")
  p.set_defaults(run=_findings)

  p = sub.add_parser("plan", help="compile the train step for Cloud TPU topologies: per-chip memory, FLOPs, fits")
  _add_gin_flags(p)
  p.add_argument("--topology", action="append", default=[], help="e.g. v4-64, v5e-64 (repeatable)")
  p.add_argument("--mesh", choices=["gin", "auto"], default="gin",
                 help="gin: the make_mesh bindings; auto: the first (data, model, remat, microbatches) that fits")
  p.set_defaults(run=_plan)

  p = sub.add_parser("tasks", help="list registered tasks and mixtures, or show formatted examples")
  p.add_argument("action", choices=["list", "show"])
  p.add_argument("name", nargs="?", help="task or mixture (for show)")
  p.add_argument("--split", default="train")
  p.add_argument("--n", type=_number(int, 1), default=3, help="examples to show")
  p.add_argument("--inputs_length", type=_number(int, 1), default=512)
  p.add_argument("--targets_length", type=_number(int, 1), default=128)
  p.add_argument("--module", action="append", default=[], help="extra module registering tasks (repeatable)")
  p.set_defaults(run=_tasks)
  return parser


def main(argv=None) -> int:
  """Runs one command; returns the exit code (2 for bad input). Other exceptions propagate."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    import gin
    with gin.unlock_config():  # a command after another in one process: its config is locked by then
      from flan_jax import distributed, gin_utils  # noqa: F401  (distributed: gin-configurable, registered first)
    bindings, rest = gin_utils.split_gin_bindings(argv)
    args = build_parser().parse_args(rest)
    args.gin_bindings = bindings
    _import_tensorflow()  # after parsing: --help and usage errors need no TensorFlow
    args.run(args)
  except UserError as e:
    # One line: gin appends "In call to configurable ..." on a line of its own.
    print(f"flan-jax: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2
  except Preempted as e:
    print(f"flan-jax: {str(e).splitlines()[0]}", file=sys.stderr)
    return PREEMPTED
  return 0


def set_up_process() -> None:
  """What the command, not the library, decides for its process: TensorFlow's C++ start-up lines hidden (it
  reads this when first imported, which commands do lazily); two log lines that are no news filtered out:
  seqio's advice to cache the in-memory datasets of registered tasks (they shuffle well uncached), and orbax's
  note at every save of one process that it has no per-process OCDBT files to merge."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  noise = ("uncached FunctionDataset", "Skipping merge of OCDBT checkpoints")
  logging.getLogger("absl").addFilter(lambda record: not any(n in record.getMessage() for n in noise))


# Start-up lines written straight to file descriptor 2 on a machine where they are no news, past Python's logging
# and TF_CPP_MIN_LOG_LEVEL: TensorFlow's while it is imported (oneDNN, the CUDA stub, absl's note that logging is
# not set up yet), and libtpu's, installed but on a machine without TPUs, when JAX looks for its devices.
START_UP_NOISE = re.compile(
    r"oneDNN custom operations|cudart_stub|cuda drivers|absl::InitializeLog|cpu_feature_guard|"
    r"rebuild TensorFlow with the appropriate compiler flags|"
    r"Failed to find host bounds for accelerator type|Logging before InitGoogle|unexpected worker hostname|"
    r"Source Location Trace|libtpu_init_utils")


@contextlib.contextmanager
def _start_up_noise_dropped():
  """Whatever the block writes to file descriptor 2 is passed on, less the START_UP_NOISE lines."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(keepends=True):
        if not START_UP_NOISE.search(line):
          sys.stderr.write(line)


def _import_tensorflow() -> None:
  if "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is not None:
    with _start_up_noise_dropped():
      import tensorflow  # noqa: F401,PLC0415


def _find_devices() -> None:
  """JAX's backends, started once here (after jax.distributed, which must come first)."""
  import jax
  with _start_up_noise_dropped():
    jax.devices()


def run(argv=None) -> NoReturn:
  """The `flan-jax` command: main(), then exit. A failed command ends the process at once, whatever threads
  (checkpoint saves, TensorBoard writers, tf.data prefetching) are still running: a hung process would hold
  a TPU slice. A successful one exits normally, so jax.distributed shuts down cleanly."""
  hugepages.reexec_with_hugepages()
  set_up_process()
  # Progress lines reach a log file or pipe as they are printed: a run killed by a preemption keeps its last lines.
  sys.stdout.reconfigure(line_buffering=True)
  try:
    code = main(argv)
  except KeyboardInterrupt:
    code = 130
  except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
    code = exit_.code if isinstance(exit_.code, int) else 1
  except BaseException:  # noqa: BLE001  (any crash: show it, then exit)
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  if code == PREEMPTED and "jax" in sys.modules:
    import jax
    jax.distributed.shutdown()  # leave together: no process takes another's exit for a lost host
  if code:
    os._exit(code)
  sys.exit(0)


if __name__ == "__main__":
  run()

"""The `flan-jax` command: one entry point, one subcommand per job.

Bad input (UserError) prints one line `flan-jax: error: ...` and exits 2, with no traceback.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flan_jax.errors import UserError  # noqa: E402


def _import_hf(args):
  from flan_jax import hf
  out = hf.import_hf(args.hf, args.out, vocabulary=args.vocab)
  print(f"wrote checkpoint {out}")


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


def _train(args):
  from flan_jax import gin_utils, train
  gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)
  train.train()


def _tasks(args):
  from flan_jax.data import listing, registration
  registration.import_task_modules(registration.DEFAULT_TASK_MODULES + tuple(args.module))
  if args.action == "list":
    lines = listing.list_lines()
  else:
    if not args.name:
      raise UserError("tasks show needs a task or mixture NAME")
    lines = listing.show_lines(args.name, args.split, args.n, {"inputs": args.inputs_length,
                                                               "targets": args.targets_length})
  print("\n".join(lines))


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

  p = sub.add_parser("model-info", help="parameter count and a forward/backward pass of a gin-configured model")
  _add_gin_flags(p)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--length", type=int, default=32)
  p.add_argument("--no_forward", action="store_true", help="only count parameters (no allocation)")
  p.set_defaults(run=_model_info)

  p = sub.add_parser("train", help="gin-configured Flan finetuning (resumes from MODEL_DIR)")
  _add_gin_flags(p)
  p.set_defaults(run=_train)

  p = sub.add_parser("tasks", help="list registered tasks and mixtures, or show formatted examples")
  p.add_argument("action", choices=["list", "show"])
  p.add_argument("name", nargs="?", help="task or mixture (for show)")
  p.add_argument("--split", default="train")
  p.add_argument("--n", type=int, default=3, help="examples to show")
  p.add_argument("--inputs_length", type=int, default=512)
  p.add_argument("--targets_length", type=int, default=128)
  p.add_argument("--module", action="append", default=[], help="extra module registering tasks (repeatable)")
  p.set_defaults(run=_tasks)
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    from flan_jax import gin_utils
    bindings, rest = gin_utils.split_gin_bindings(argv)
    args = build_parser().parse_args(rest)
    args.gin_bindings = bindings
    args.run(args)
  except UserError as e:
    # One line: gin appends "In call to configurable ..." on a line of its own.
    print(f"flan-jax: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())

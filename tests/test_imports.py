"""Importing the library leaves the process as it was, and the accelerator path needs no data stack."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SNAPSHOT = """
import logging, os, sys, gin
def snapshot():
  loggers = {name: list(logging.getLogger(name).filters) for name in ("", "absl")}
  return dict(os.environ), loggers, list(gin.config._FILE_READERS), list(sys.path)
"""


def _python(code, env=None):
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_importing_every_module_changes_nothing_in_the_process():
  """Environment, logging filters, gin's file readers and sys.path: the CLI entry point sets them, not imports.
  The third-party libraries are imported first, so what they do at import is not counted."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  code = SNAPSHOT + """
import importlib, pkgutil, jax, seqio, tensorflow, flax, optax, orbax.checkpoint, transformers, matplotlib
import flan_jax
before = snapshot()
names = [m.name for m in pkgutil.walk_packages(flan_jax.__path__, "flan_jax.")]
for name in names:
  importlib.import_module(name)
import flan_jax_tasks.demo
after = snapshot()
for part, a, b in zip(("environment", "logging filters", "gin file readers", "sys.path"), before, after):
  assert a == b, (part, a, b)
print(len(names))
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(result.stdout.split()[-1]) > 30  # every module, not a few


# None in sys.modules: `import` fails and importlib.util.find_spec answers "not installed", as on a machine
# without them.
BLOCK_DATA_STACK = """
import sys
sys.modules.update(dict.fromkeys(["tensorflow", "seqio", "tensorflow_datasets", "tf_keras"]))
"""


def test_accelerator_path_runs_without_tensorflow_or_seqio(tmp_path):
  """On a GPU machine with only jax, flax, optax, orbax and transformers: build, train a step, save, decode, and
  export to HuggingFace and back."""
  code = BLOCK_DATA_STACK + f"""
import numpy as np, jax
from flan_jax import checkpoints, decoding, hf, partitioning, trainer
from flan_jax.models import T5Config
from flan_jax.optim import adafactor
config = T5Config(vocab_size=64, d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                  num_decoder_layers=1)
tx, mesh = adafactor(), partitioning.make_mesh()
shardings = trainer.Shardings(config, tx, mesh)
state = trainer.init_state(config, tx, shardings, jax.random.key(0))
step = trainer.jit_train_step(trainer.make_train_step(config, tx, z_loss=0.0), shardings)
tokens = np.arange(2, 26, dtype=np.int32).reshape(2, 12) % 60 + 2
features = {{"encoder_input_tokens": tokens, "decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": tokens, "decoder_loss_weights": np.ones_like(tokens)}}
features = partitioning.global_batch(features, mesh, partitioning.data_layout(mesh, 2))
state, metrics = step(state, features, jax.random.key(1))
assert np.isfinite(float(metrics["loss"]))
params = jax.device_get(state.params)
meta = {{"model_config": config.to_dict(), "vocabulary_fingerprint": "ByteVocabulary:259"}}
checkpoints.write_new("{tmp_path}/ckpt", 1, params, meta)
hf.export_hf("{tmp_path}/ckpt", "{tmp_path}/hf")
read_config, read_params = hf.read_hf("{tmp_path}/hf")
assert read_config == config
for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(read_params)):
  np.testing.assert_array_equal(a, b)
greedy, _ = decoding.sample(params, tokens, jax.random.key(2), config=config, max_length=5)
beams = decoding.beam_search(params, tokens, config=config, max_length=5, beam_size=2)
assert np.asarray(greedy).shape == (2, 5)
print("ok")
"""
  assert _python(code).split()[-1] == "ok"


def test_start_up_lines_written_to_fd_2_are_dropped_and_the_rest_kept(capfd):
  from flan_jax import cli
  with cli._start_up_noise_dropped():
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\nkeep this line\n")
    os.write(2, b"=== Source Location Trace: === \nlearning/45eac/tfrc/runtime/libtpu_init_utils.cc:327\n")
  assert capfd.readouterr().err == "keep this line\n"


def _imports_of(path: str, package: str, modules) -> set[str]:
  """The flan_jax modules a file imports anywhere in it (at the top or inside a function); `from a import b`
  imports the module a.b where there is one, else a."""
  import ast
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
  return {name for name in found if name.startswith("flan_jax")}


def test_no_import_cycles_in_the_package():
  """No module of flan_jax imports, directly or through others, a module that imports it back."""
  modules = {}
  for folder, _, files in os.walk(os.path.join(REPO, "flan_jax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        modules[module] = path
  graph = {}
  for module, path in modules.items():
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    graph[module] = {m for m in _imports_of(path, package, modules) if m in modules and m != module}
  assert {"flan_jax.train", "flan_jax.settings"} <= graph["flan_jax.plan"] | graph["flan_jax.train"]  # it reads

  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      for m in graph[todo.pop()] - seen:
        seen.add(m)
        todo.append(m)
    return seen

  cycles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if a in reachable(b))
  assert not cycles, cycles

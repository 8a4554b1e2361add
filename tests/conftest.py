"""Shared fixtures: the real data in ../shared/data (or $FLAN_JAX_SHARED_DATA), skipped with a reason if absent."""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests run on the CPU (fake devices where they need several); libtpu, installed for `flan-jax plan`, is only the
# compiler for TPU topologies, and this process and its subprocesses may all load it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# etils.epath picks its gs:// backend once: gcsfs (which the `gcs` fixture points at a local server), not
# TensorFlow's GCS client, which has no endpoint setting.
os.environ.setdefault("EPATH_USE_TF", "false")

# One persistent XLA compilation cache for the run, shared by the pytest-xdist workers and the CLI subprocesses
# (they inherit the environment): many tests compile the same tiny programs, which cost about 20 s a training run
# on a 2-core machine before. A cache dir given from outside is used and kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flan-jax-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests compile many small programs, most run once or twice: LLVM's optimisations cost more than they save
# there. The TPU compiler behind `flan-jax plan` ignores the flag. Subprocesses inherit it (test_train.run_cli adds
# their device counts to it), so runs compared bitwise are compiled alike.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("FLAN_JAX_SHARED_DATA") or os.path.join(REPO, "..", "shared", "data")


def pytest_sessionfinish(session):
  if _OWN_CACHE:  # the process that made it: the controller (after every worker) or a lone run
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# `make test` runs files on 2 pytest-xdist workers (--dist loadfile), which by default start files with the most
# tests first. Longest first instead (their times in a full run), so that at the end neither worker is left alone
# with a long file while the other has nothing to do.
LONGEST_FILES_FIRST = ["test_train.py", "test_demo_tasks.py", "test_multihost.py", "test_mesh.py", "test_plan.py",
                       "test_gcs.py", "test_inference.py", "test_scripts.py", "test_lora.py"]


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's: keep the order below
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _clean_gin():
  """Each test starts without the gin bindings an earlier one parsed (T5Config is gin-configurable)."""
  yield
  import gin
  gin.clear_config()


@pytest.fixture(scope="session")
def shared_data():
  if not os.path.isdir(SHARED_DATA):
    message = f"shared data not found at {SHARED_DATA} (set FLAN_JAX_SHARED_DATA)"
    if os.environ.get("CI"):
      pytest.fail(message)  # in CI the data is always beside the clone: a skip would hide a broken setup
    pytest.skip(message)
  return os.path.abspath(SHARED_DATA)


@pytest.fixture(scope="session")
def t5_vocab(shared_data):
  from flan_jax.vocab import sentencepiece_vocabulary
  return sentencepiece_vocabulary(os.path.join(shared_data, "t5_vocab", "spiece.model"))


GCS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
           "EPATH_USE_TF": "false", "GOOGLE_CLOUD_PROJECT": "test"}  # EPATH_USE_TF for subprocesses


@pytest.fixture(scope="session")
def gcs():
  """A GCS server on 127.0.0.1 (tests/gcs_server.py; it stops itself after 30 minutes) with a bucket
  `flan-jax-test`, and the environment that points google-cloud-storage, gcsfs (so etils.epath) and
  tensorstore (so orbax) at it. Yields the environment, for subprocesses."""
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_server.py"), str(port), "1800"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    url = f"http://127.0.0.1:{port}"
    env = {**GCS_ENV, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
    os.environ.update(env)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("flan-jax-test")
    yield env
  finally:
    proc.kill()
    proc.wait()

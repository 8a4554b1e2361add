"""Shared fixtures: the real data in ../shared/data (or $FLAN_JAX_SHARED_DATA), skipped with a reason if absent."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests run on the CPU (fake devices where they need several); libtpu, installed for `flan-jax plan`, is only the
# compiler for TPU topologies, and this process and its subprocesses may all load it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("FLAN_JAX_SHARED_DATA") or os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
  if not os.path.isdir(SHARED_DATA):
    message = f"shared data not found at {SHARED_DATA} (set FLAN_JAX_SHARED_DATA)"
    if os.environ.get("CI"):
      pytest.fail(message)  # in CI the data is always beside the clone: a skip would hide a broken setup
    pytest.skip(message)
  return os.path.abspath(SHARED_DATA)

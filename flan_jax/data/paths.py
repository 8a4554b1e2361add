"""Where the real data for tests and examples lives: $FLAN_JAX_SHARED_DATA, else ../shared/data; and T5's
vocabulary for the built-in tasks over real data: $FLAN_JAX_VOCAB, else the shared one."""

import os

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_data_dir() -> str | None:
  path = os.environ.get("FLAN_JAX_SHARED_DATA") or os.path.join(REPO_DIR, "..", "shared", "data")
  return os.path.abspath(path) if os.path.isdir(path) else None


def t5_vocabulary_path() -> str | None:
  if os.environ.get("FLAN_JAX_VOCAB"):
    return os.environ["FLAN_JAX_VOCAB"]
  shared = shared_data_dir()
  return os.path.join(shared, "t5_vocab", "spiece.model") if shared else None

"""Where the real data for tests and examples lives: $FLAN_JAX_SHARED_DATA, else ../shared/data."""

import os

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_data_dir() -> str | None:
  path = os.environ.get("FLAN_JAX_SHARED_DATA") or os.path.join(REPO_DIR, "..", "shared", "data")
  return os.path.abspath(path) if os.path.isdir(path) else None

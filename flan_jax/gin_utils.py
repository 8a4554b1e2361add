"""Gin parsing with t5x's flags: --gin_file (repeatable), --gin_search_paths, --gin.NAME=VALUE."""

import logging
import os

import gin

from flan_jax.errors import UserError

# The repository's gin/ folder is always searched, so `--gin_file=models/small.gin` works from anywhere.
REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")

# gin logs an ERROR for every search-path miss on its way to the file it then finds.
logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("Path not found:"))


def split_gin_bindings(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separate `--gin.NAME=VALUE` flags (argparse cannot declare them) from the other arguments."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      if "=" not in arg:
        raise UserError(f"bad gin flag {arg!r}: expected --gin.NAME=VALUE")
      name, value = arg[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def _find(path: str, search_paths: list[str]) -> str:
  for base in [""] + search_paths:
    candidate = os.path.join(base, path)
    if os.path.isfile(candidate):
      return candidate
  raise UserError(f"gin file not found: {path} (searched ., {', '.join(search_paths)})")


def parse(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
  """Parse files then bindings; any gin error becomes one line naming the file and line or the binding."""
  search_paths = [p for p in search_paths if p] + [REPO_GIN_DIR]
  for path in search_paths:
    gin.add_config_file_search_path(path)
  gin.clear_config()
  for path in gin_files:
    found = _find(path, search_paths)
    try:
      gin.parse_config_file(found)
    except Exception as e:  # gin raises ValueError, SyntaxError, ImportError... all mean a bad file
      raise UserError(f"gin file {found}: {_one_line(e)}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise UserError(f"gin binding {binding!r}: {_one_line(e)}") from e
  gin.finalize()


def _one_line(e: Exception) -> str:
  return " ".join(line.strip() for line in str(e).splitlines() if line.strip())

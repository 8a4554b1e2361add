"""Gin parsing with t5x's flags: --gin_file (repeatable), --gin_search_paths, --gin.NAME=VALUE.

Stricter than t5x in two ways: a file (or an `include` in one) is only ever read from a plain file on the search
paths, never from an importable package of the same name; and a `--gin.NAME=VALUE` macro that nothing refers to
is an error (a misspelled TRAIN_STEP would otherwise be ignored in silence).
"""

import difflib
import logging
import os

import gin

from flan_jax.errors import UserError

# The repository's gin/ folder is always searched, so `--gin_file=models/small.gin` works from anywhere.
REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")



def _not_a_search_miss(record) -> bool:
  """gin logs an ERROR for every search-path miss on its way to the file it then finds."""
  return not record.getMessage().startswith("Path not found:")


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


def parse(gin_files: list[str], bindings: list[str], search_paths: list[str] = (), finalize: bool = True) -> None:
  """Parse files then bindings; any gin error becomes one line naming the file and line or the binding.
  `finalize` checks that every %gin.REQUIRED value was given (jobs that do not run train leave it off)."""
  search_paths = [p for p in search_paths if p] + [REPO_GIN_DIR]
  gin.config._LOCATION_PREFIXES[:] = [""] + search_paths  # noqa: SLF001  (includes: the same paths, no duplicates)
  # gin also looks an include such as 'runs/finetune.gin' up as a resource of an importable package `runs`; any
  # directory of that name in the working directory (the demo's own output, runs/demo) is such a package, and the
  # lookup crashes. Only plain files are config files here.
  gin.config._FILE_READERS[:] = [(open, os.path.isfile)]  # noqa: SLF001  (gin-config 0.5.0, pinned)
  if _not_a_search_miss not in logging.getLogger().filters:
    logging.getLogger().addFilter(_not_a_search_miss)
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
  _check_macros_used([b.split("=", 1)[0].strip() for b in bindings])
  if not finalize:
    return
  try:
    gin.finalize()
  except ValueError as e:  # a %gin.REQUIRED value nobody set
    raise UserError(f"gin: {_one_line(e)} (give it with --gin.NAME=VALUE)") from e


def _check_macros_used(names: list[str]) -> None:
  """A flag that sets a macro (NAME = VALUE, no dot) nothing refers to is a typo; name the closest macros."""
  config = gin.config._CONFIG  # noqa: SLF001
  macro = gin.config.get_configurable(gin.config.macro)
  defined = sorted(scope for scope, selector in config if selector == "gin.macro")
  used = {"/".join(ref.scopes) for ref in gin.config.iterate_references(config, to=macro)}
  for name in names:
    if "." in name or name in used:
      continue
    close = difflib.get_close_matches(name, [m for m in defined if m in used], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; the macros in use are {', '.join(sorted(used))}"
    raise UserError(f"gin binding --gin.{name}: no configurable refers to the macro {name}{hint}")


def _one_line(e: Exception) -> str:
  return " ".join(line.strip() for line in str(e).splitlines() if line.strip())

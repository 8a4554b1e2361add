#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py) on a machine with jax[cuda], torch and transformers but not flan-jax's
# data stack: the repository on PYTHONPATH, plus gin-config from $GIN_DIR when it is not installed (it is pure
# Python: carry it from .venv). Writes $OUT/gpu_check.md (or ./gpu_check.md). At most 8 minutes on one H200.
#   bash scripts/gpu_check.sh [--tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${GIN_DIR:+:$GIN_DIR}${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # each framework's peak memory is its own, in its own process
exec timeout 480 "${PYTHON:-python3}" scripts/gpu_check.py --out "${OUT:-.}/gpu_check.md" "$@"

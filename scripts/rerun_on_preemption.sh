#!/usr/bin/env bash
# Runs a command again for as long as it exits with 75, flan-jax's preemption exit (its step is saved): a preempted
# run resumes where it stopped and goes on to TRAIN_STEPS; a finished run's rerun does nothing and exits 0.
#
#   scripts/rerun_on_preemption.sh .venv/bin/flan-jax train --gin_file=...
set -uo pipefail
while true; do
  "$@"
  code=$?
  [ "$code" = 75 ] || exit "$code"
  echo "preempted (exit 75): running the same command again" >&2
done

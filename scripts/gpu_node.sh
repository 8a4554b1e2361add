#!/usr/bin/env bash
# Run flan-jax on a multi-GPU node, or on one node of several: one process per node sees all its GPUs.
#
#   scripts/gpu_node.sh [--run] [--nodes N --node_rank R --coordinator HOST:PORT] -- train --gin_file=... ...
#
# On several nodes, run it on each with its --node_rank; node 0's HOST:PORT is the coordinator.
# After a preemption exit (75) the command runs again (scripts/rerun_on_preemption.sh) and resumes.
# Without --run it prints the command it would run.
set -euo pipefail
run=0 nodes=1 rank=0 coordinator=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --run) run=1; shift ;;
    --nodes) nodes=$2; shift 2 ;;
    --node_rank) rank=$2; shift 2 ;;
    --coordinator) coordinator=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "${1:-}" = "--" ] || { echo "usage: $0 [--run] [--nodes N --node_rank R --coordinator HOST:PORT] -- flan-jax-args..." >&2; exit 2; }
shift
env=""
if [ "$nodes" -gt 1 ]; then
  [ -n "$coordinator" ] || { echo "--coordinator HOST:PORT is needed with --nodes > 1" >&2; exit 2; }
  env="FLAN_JAX_COORDINATOR_ADDRESS=$coordinator FLAN_JAX_NUM_PROCESSES=$nodes FLAN_JAX_PROCESS_ID=$rank "
fi
cd "$(dirname "$0")/.."
command="${env}scripts/rerun_on_preemption.sh .venv/bin/flan-jax$(printf ' %q' "$@")"
echo "[ -x .venv/bin/flan-jax ] || (python3 -m venv .venv && .venv/bin/pip install -q -e '.[cuda]')"
echo "$command"
if [ $run = 1 ]; then
  [ -x .venv/bin/flan-jax ] || (python3 -m venv .venv && .venv/bin/pip install -q -e '.[cuda]')
  eval "$command"
fi

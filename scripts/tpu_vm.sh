#!/usr/bin/env bash
# Run a gin-configured flan-jax job on every worker of a Cloud TPU VM slice: the same command, the same gin
# files; JAX finds the slice's workers itself (FLAN_JAX_DISTRIBUTED=auto).
#
#   scripts/tpu_vm.sh [--run] TPU_NAME ZONE REPO_URL -- train --gin_file=models/xxl.gin --gin_file=runs/finetune.gin ...
#
# Without --run it prints the commands it would run (this machine has no TPU and no gcloud).
set -euo pipefail
run=0
if [ "${1:-}" = "--run" ]; then run=1; shift; fi
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  echo "usage: $0 [--run] TPU_NAME ZONE REPO_URL -- flan-jax-args..." >&2
  exit 2
fi
tpu=$1 zone=$2 repo=$3
shift 4
args=$(printf ' %q' "$@")
setup="test -d flan-jax || git clone $repo flan-jax; cd flan-jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
job="cd flan-jax && FLAN_JAX_DISTRIBUTED=auto .venv/bin/flan-jax$args"
commands=(
  "gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=all --command \"$setup\""
  "gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=all --command \"$job\""
)
for c in "${commands[@]}"; do
  echo "$c"
  if [ $run = 1 ]; then eval "$c"; fi
done

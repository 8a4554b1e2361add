#!/usr/bin/env bash
# Run a gin-configured flan-jax job on every worker of a Cloud TPU VM slice: the same command, the same gin
# files; JAX finds the slice's workers itself (FLAN_JAX_DISTRIBUTED=auto). Each worker reruns the command after a
# preemption exit (75, scripts/rerun_on_preemption.sh); a deleted spot VM must be recreated, then the same
# command resumes.
#
#   scripts/tpu_vm.sh [--run] TPU_NAME ZONE REPO_URL -- train --gin_file=models/xxl.gin --gin_file=runs/finetune.gin ...
#
# The FLAN_JAX_* variables set here (FLAN_JAX_FLAN_COLLECTION, FLAN_JAX_VOCAB, FLAN_JAX_SHARED_DATA) are set for the
# job on every worker too: the task registries read them there.
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
forwarded=""
for name in $(compgen -e); do
  case $name in  # not the process settings: the workers find each other
    FLAN_JAX_DISTRIBUTED|FLAN_JAX_COORDINATOR_ADDRESS|FLAN_JAX_NUM_PROCESSES|FLAN_JAX_PROCESS_ID) ;;
    FLAN_JAX_*) forwarded+="$name=$(printf '%q' "${!name}") " ;;
  esac
done
setup="test -d flan-jax || git clone $repo flan-jax; cd flan-jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
job="cd flan-jax && ${forwarded}FLAN_JAX_DISTRIBUTED=auto scripts/rerun_on_preemption.sh .venv/bin/flan-jax$args"
commands=(
  "gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=all --command \"$setup\""
  "gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=all --command \"$job\""
)
for c in "${commands[@]}"; do
  echo "$c"
  if [ $run = 1 ]; then eval "$c"; fi
done

#!/usr/bin/env bash
# Runs one command on EVERY worker of a Cloud TPU VM pod (multi-controller JAX: all workers
# run the same program; jax.distributed finds the other workers through the TPU metadata).
#
#   launch/tpu_pod.sh --name=my-v5p-256 --zone=us-east5-a [--project=PROJECT] \
#       [--repo_dir='~/agentic_jax'] [--setup='pip install -e .'] [--dry-run] \
#       -- python launch/train.py --config=configs/midtrain.py:longcat_flash --workdir=gs://b/run1
#
# The repository must already exist at --repo_dir on every worker (e.g. once with
# --setup='git clone URL ~/agentic_jax && pip install -e ~/agentic_jax', which runs in the
# home directory before anything else). The command runs in --repo_dir with
# AGENTIC_JAX_DISTRIBUTED=auto, so agentic_jax.parallel.initialize_distributed() joins the pod
# even where it would not detect it by itself. --dry-run prints the gcloud commands only.
# Before renting the pod: python launch/plan.py --config=... --mesh=... (fits in memory?).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

name="" zone="" project="" repo_dir="~/agentic_jax" setup="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --repo_dir=*) repo_dir="${1#*=}" ;;
    --setup=*) setup="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
  shift
done
[[ -n "$name" ]] || { echo "tpu_pod.sh: --name=TPU_NAME is required" >&2; usage; }
[[ -n "$zone" ]] || { echo "tpu_pod.sh: --zone=ZONE is required" >&2; usage; }
[[ $# -gt 0 ]] || { echo "tpu_pod.sh: no command given after --" >&2; usage; }

# The command, re-quoted word by word so it survives the remote shell unchanged.
remote_cmd=""
for word in "$@"; do remote_cmd+=" $(printf '%q' "$word")"; done
remote_cmd="cd ${repo_dir} && AGENTIC_JAX_DISTRIBUTED=auto${remote_cmd}"

gcloud_ssh=(gcloud compute tpus tpu-vm ssh "$name" "--zone=$zone")
[[ -n "$project" ]] && gcloud_ssh+=("--project=$project")
gcloud_ssh+=(--worker=all)

run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

if [[ -n "$setup" ]]; then
  run "${gcloud_ssh[@]}" "--command=$setup"
fi
run "${gcloud_ssh[@]}" "--command=$remote_cmd"

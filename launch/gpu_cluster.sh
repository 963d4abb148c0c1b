#!/usr/bin/env bash
# Starts a multi-process JAX job on a SLURM GPU cluster, from inside an allocation
# (sbatch script or salloc): one process per node (default; it drives all the node's GPUs)
# or one per GPU. The coordinator is the first node of the allocation.
#
#   salloc --nodes=4 --gpus-per-node=8 ...
#   launch/gpu_cluster.sh [--per=node|gpu] [--gpus_per_node=8] [--port=12345] [--dry-run] \
#       -- python launch/train.py --config=configs/midtrain.py:deepseek_v3 --workdir=/shared/run1
#
# Every process gets --coordinator_address=FIRST_NODE:PORT --num_processes=N
# --process_id=$SLURM_PROCID appended to the command (launch/train.py passes them to
# agentic_jax.parallel.initialize_distributed). With --per=gpu each process sees only its own
# GPU (CUDA_VISIBLE_DEVICES narrowed by $SLURM_LOCALID). Nodes come from
# `scontrol show hostnames $SLURM_JOB_NODELIST`, or --hosts=a,b,c (e.g. for --dry-run outside
# SLURM). --dry-run prints the srun command instead of running it.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

per="node" gpus_per_node="${SLURM_GPUS_ON_NODE:-8}" port=12345 hosts="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --per=*) per="${1#*=}" ;;
    --gpus_per_node=*) gpus_per_node="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --hosts=*) hosts="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "gpu_cluster.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "gpu_cluster.sh: no command given after --" >&2; usage; }
[[ "$per" == node || "$per" == gpu ]] || { echo "gpu_cluster.sh: --per must be node or gpu, got '$per'" >&2; exit 2; }
[[ "$gpus_per_node" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_cluster.sh: --gpus_per_node must be a positive integer, got '$gpus_per_node'" >&2; exit 2; }

if [[ -n "$hosts" ]]; then
  IFS=, read -r -a nodes <<< "$hosts"
else
  [[ -n "${SLURM_JOB_NODELIST:-}" ]] || { echo "gpu_cluster.sh: not inside a SLURM allocation (no SLURM_JOB_NODELIST); run under sbatch/salloc or pass --hosts=a,b" >&2; exit 2; }
  mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
fi
num_nodes=${#nodes[@]}
[[ $num_nodes -gt 0 ]] || { echo "gpu_cluster.sh: no nodes found" >&2; exit 2; }
coordinator="${nodes[0]}:${port}"

if [[ "$per" == node ]]; then
  tasks_per_node=1
  select_gpu=""
else
  tasks_per_node=$gpus_per_node
  # Each task keeps the SLURM_LOCALID-th GPU of the node's visible list.
  select_gpu='export CUDA_VISIBLE_DEVICES=$(echo "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 '"$((gpus_per_node - 1))"')}" | cut -d, -f$((SLURM_LOCALID + 1))); '
fi
num_processes=$((num_nodes * tasks_per_node))

cmd=""
for word in "$@"; do cmd+="$(printf '%q' "$word") "; done
# $SLURM_PROCID stays unexpanded here: each task expands its own.
task="${select_gpu}exec ${cmd}--coordinator_address=${coordinator} --num_processes=${num_processes} --process_id=\$SLURM_PROCID"

srun_cmd=(srun "--nodes=${num_nodes}" "--ntasks=${num_processes}" "--ntasks-per-node=${tasks_per_node}"
          --kill-on-bad-exit=1 bash -c "$task")
if [[ $dry_run -eq 1 ]]; then
  echo "# coordinator ${coordinator}, ${num_processes} processes (${tasks_per_node} per node on ${num_nodes} nodes: ${nodes[*]})"
  printf '%q ' "${srun_cmd[@]}"; echo
else
  exec "${srun_cmd[@]}"
fi

#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md ("On a GPU"): the train-step, rollout and
# accel_train benchmarks on the first visible GPU, each writing its JSON into OUT_DIR (default
# benchmarks/results, files *_gpu.json). Usage: bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
OUT_DIR=${1:-benchmarks/results}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rc=0
python3 benchmarks/train_step.py --quick --models=tiny,m50 \
  --variants=dropless/b512/xla,dropless/b512/chunked,capacity/b512/xla \
  --out "$OUT_DIR/train_step_gpu.json" || rc=1
python3 benchmarks/rollout.py --quick --torch_device=cuda --out "$OUT_DIR/rollout_gpu.json" || rc=1
# issue 19 item 4: bf16 training of the 1.54B dense MLA and the 2.85B (1.45B activated) MoE with
# fused attention (cuDNN) and ragged_dot MoE, MFU vs the rated bf16 peak, and MLA-cache decode
python3 benchmarks/accel_train.py --out "$OUT_DIR/accel_train_gpu.json" || rc=1
exit $rc

#!/bin/bash
# The GPU check of the speed work, for a machine with one GPU (~5 minutes on an H200).
#
# Here, once:   make gpu-data          (copies the full grayscale set to data/full/, git-ignored,
#                                       and the wheels the device lacks to benchmarks/wheels/)
# Device tool:  run command "bash benchmarks/gpu_check.sh", carry ["data/full", "benchmarks/wheels"]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/full/cifar10_gray_uint8.npz}
[ -f "$DATA" ] || { echo "gpu_check: $DATA missing (run 'make gpu-data' and carry data/full)" >&2; exit 2; }
PY=${PY:-python3}
# the device image has torch, xarray, scipy ...; what it lacks comes as carried wheels
if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install --quiet --no-index --no-deps benchmarks/wheels/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 $PY benchmarks/gpu_check.py --data "$DATA" --out "${OUT:-/tmp/gpu_check}"

#!/usr/bin/env bash
# The prepared one-GPU check: the device, then benchmarks/gpu_check.py's table (model step, real training
# loop from TFRecords with on-device augmentation, TTA inference, MFU). Under 8 minutes on one GPU;
# `--cpu-smoke` runs tiny settings on CPU (CI). Run from anywhere: bash benchmarks/gpu_check.sh [--cpu-smoke]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PYTHON" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices())"
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"

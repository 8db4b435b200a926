#!/bin/bash
# GPU check for issue #14 (docs/performance.md, "GPU check"): on a machine with one NVIDIA
# GPU, installs the CUDA jax wheels into a fresh venv, then runs benchmarks/gpu_check.py:
# cudnn vs xla attention numerics, and a ~1B-parameter packed stage-2 bf16 train step with
# MFU against the chip's bf16 peak. Budget: under 10 minutes (install ~2-3 min, compile
# ~1-2 min, timing < 1 min).
#   benchmarks/gpu_check.sh [OUT_DIR]     (run from the repository root)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,7p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
VENV=${GPU_VENV:-/tmp/gpu_venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "jax[cuda12]==0.10.2" flax==0.12.8 optax==0.2.8 \
    orbax-checkpoint==0.12.8 ml_collections==1.1.0 numpy==2.4.6 absl-py==2.5.1
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
PYTHONPATH=$PWD timeout 480 "$VENV/bin/python" benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"
tail -n 1 "$OUT/gpu_check.log" > "$OUT/gpu_check.json"
echo "wrote $OUT/gpu_check.json"

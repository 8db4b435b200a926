#!/usr/bin/env bash
# The README's performance figures, in one go on a quiet machine: the paper's speed claim
# (`bench speed`), utilisation against the measured matmul peak (`bench mfu`) and the PyTorch
# comparison (`bench torch`). Each writes OUT/<name>.json and OUT/<name>.txt.
#   benchmarks/run_all.sh [OUT]     (default runs/bench)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,5p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
bash launch/setup.sh
OUT=${1:-runs/bench}
mkdir -p "$OUT"
PY=.venv/bin/python
export JAX_PLATFORMS=cpu
$PY -m acformer_jax.bench speed --config configs/bench_cpu_stage1.py --json "$OUT/speed.json" | tee "$OUT/speed.txt"
$PY -m acformer_jax.bench mfu --config configs/bench_cpu_stage1.py --json "$OUT/mfu.json" | tee "$OUT/mfu.txt"
$PY -m acformer_jax.bench torch --json "$OUT/torch.json" | tee "$OUT/torch.txt"

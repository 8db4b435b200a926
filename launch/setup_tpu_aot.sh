#!/usr/bin/env bash
# Creates .venv-tpu: the CPU-machine environment for ahead-of-time TPU compiles
# (python -m acformer_jax.aot; docs/aot.md). It pins the project's jax with its [tpu] extra
# (libtpu 0.0.42.x for jax 0.10.2, docs/aot_tpu.md section 1) plus what the train step imports;
# the main .venv stays untouched. Idempotent: re-running only reinstalls when the pins change.
#
# Usage: launch/setup_tpu_aot.sh [--dry-run] [-h|--help]
#   --dry-run   print the commands instead of running them

set -euo pipefail
source "$(dirname "$0")/_common.sh"
while (( $# )); do
  case "$1" in
    -h|--help) print_help "$0"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
cd "$(repo_root)"

# Versions from requirements.txt; the train step needs no torch/transformers/tfds (sentencepiece:
# the tiny test configs' demo tokenizer).
PINS=("jax[tpu]==$ACFORMER_JAX_VERSION")
for pkg in flax optax orbax-checkpoint ml_collections absl-py numpy pillow pytest sentencepiece; do
  line=$(grep -iE "^${pkg}==" requirements.txt) || die "requirements.txt has no pin for $pkg"
  PINS+=("$line")
done
stamp=.venv-tpu/.pins.sha256
want=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -d' ' -f1)
if [[ "$DRY_RUN" != 1 && -x .venv-tpu/bin/python && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
  note ".venv-tpu is up to date"; exit 0
fi
PY=${ACFORMER_PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[[ -x .venv-tpu/bin/python ]] || run "$PY" -m venv .venv-tpu
run .venv-tpu/bin/pip install -q "${PINS[@]}"
run .venv-tpu/bin/python -c "import libtpu, jax; print('libtpu ok, jax', jax.__version__)"
[[ "$DRY_RUN" == 1 ]] || echo "$want" > "$stamp"

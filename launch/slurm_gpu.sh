#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one batch job, `srun` starts the same command on every
# node, process 0 (first node of the allocation) is the jax.distributed coordinator.
#
# Usage: launch/slurm_gpu.sh [options] [-- TRAIN_ARGS...]
#   e.g. launch/slurm_gpu.sh --nodes 4 --partition a3 -- --config configs/<file>.py --workdir /nfs/run1
#
# Without --dry-run the batch script is written to LOG_DIR/<job-name>.sbatch and submitted
# with sbatch (or run directly with --no-submit inside an existing allocation).
#
# Options:
#   --nodes N              nodes (default 1)
#   --gpus-per-node G      GPUs per node (default 8)
#   --tasks-per-node T     1 = one process per node owning all its GPUs (default);
#                          G = one process per GPU
#   --partition P          --account A          --time HH:MM:SS (default 24:00:00)
#   --job-name NAME        default acformer
#   --port P               coordinator port on the first node (default 12355)
#   --module MOD           python module (default acformer_jax.train)
#   --python PY            interpreter on the nodes (default .venv/bin/python)
#   --xla-flags FLAGS      XLA_FLAGS (default: recommended GPU flags, docs/launch.md)
#   --env KEY=VALUE        extra environment for the job (repeatable)
#   --init-timeout S       start-up deadline for all processes to join (default 600)
#   --sbatch-arg ARG       extra #SBATCH line, e.g. --sbatch-arg=--exclusive (repeatable)
#   --log-dir DIR          default logs/slurm
#   --no-submit            run the batch script with bash here (inside salloc) instead of sbatch
#   --dry-run              print the batch script and the submit command
#   -h, --help             this help

set -euo pipefail
source "$(dirname "$0")/_common.sh"
ROOT=$(repo_root)

NODES=1; GPUS=8; TPN=1; PARTITION=""; ACCOUNT=""; TIME=24:00:00; JOB=acformer; PORT=12355
MODULE=acformer_jax.train; PY=.venv/bin/python; XLA=""; EXTRA_ENV=(); INIT_TIMEOUT=600
SBATCH_EXTRA=(); LOG_DIR=logs/slurm; SUBMIT=1; ARGS=()
while (( $# )); do
  case "$1" in
    -h|--help) print_help "$0"; exit 0 ;;
    --nodes) NODES=$2; shift ;;
    --gpus-per-node) GPUS=$2; shift ;;
    --tasks-per-node) TPN=$2; shift ;;
    --partition) PARTITION=$2; shift ;;
    --account) ACCOUNT=$2; shift ;;
    --time) TIME=$2; shift ;;
    --job-name) JOB=$2; shift ;;
    --port) PORT=$2; shift ;;
    --module) MODULE=$2; shift ;;
    --python) PY=$2; shift ;;
    --xla-flags) XLA=$2; shift ;;
    --env) [[ "$2" == *=* ]] || die "--env expects KEY=VALUE, got '$2'"; EXTRA_ENV+=("$2"); shift ;;
    --init-timeout) INIT_TIMEOUT=$2; shift ;;
    --sbatch-arg=*) SBATCH_EXTRA+=("${1#--sbatch-arg=}") ;;
    --sbatch-arg) SBATCH_EXTRA+=("$2"); shift ;;
    --log-dir) LOG_DIR=$2; shift ;;
    --no-submit) SUBMIT=0 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; ARGS=("$@"); break ;;
    *) die "unknown option '$1' (training arguments go after --; see --help)" ;;
  esac
  shift
done
for v in NODES GPUS TPN PORT INIT_TIMEOUT; do
  is_uint "${!v}" && (( ${!v} >= 1 )) || die "$v must be a positive integer, got '${!v}'"
done
(( TPN == 1 || TPN == GPUS )) || die "--tasks-per-node must be 1 or --gpus-per-node ($GPUS), got $TPN"
(( ${#ARGS[@]} )) || die "no training arguments: add -- --config configs/<file>.py --workdir DIR"
XLA=${XLA:-$(gpu_xla_flags)}

# One process per node sees all its GPUs (JAX_LOCAL_DEVICE_IDS); one process per GPU
# lets jax's SLURM detection pin each process to GPU $SLURM_LOCALID.
local_ids=""
if (( TPN == 1 )); then local_ids=$(seq -s, 0 $((GPUS - 1))); fi

batch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TPN"
  echo "#SBATCH --gpus-per-node=$GPUS"
  echo "#SBATCH --time=$TIME"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$PARTITION"
  [[ -n "$ACCOUNT" ]] && echo "#SBATCH --account=$ACCOUNT"
  local a; for a in "${SBATCH_EXTRA[@]}"; do echo "#SBATCH $a"; done
  cat <<EOF
set -euo pipefail
cd $(quote "$ROOT")
# Coordinator: process 0 runs on the first node of the allocation.
COORD_HOST=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | sed -n 1p)  # sed reads all: no SIGPIPE under pipefail
export ACFORMER_DISTRIBUTED=on ACFORMER_COORDINATOR="\$COORD_HOST:$PORT"
export ACFORMER_NUM_PROCESSES=$((NODES * TPN)) ACFORMER_EXPECTED_DEVICES=$((NODES * GPUS))
export ACFORMER_INIT_TIMEOUT_S=$INIT_TIMEOUT
export XLA_FLAGS=$(quote "$XLA")
EOF
  [[ -n "$local_ids" ]] && echo "export JAX_LOCAL_DEVICE_IDS=$local_ids"
  for a in "${EXTRA_ENV[@]}"; do echo "export $(quote "$a")"; done
  # shellcheck disable=SC2016
  echo "srun --kill-on-bad-exit=1 bash -c 'ACFORMER_PROCESS_ID=\$SLURM_PROCID exec \"\$@\"' _ $(quote "$PY" -m "$MODULE" "${ARGS[@]}")"
}

FILE="$LOG_DIR/$JOB.sbatch"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $FILE:"
  batch_script
  echo "# submit:"
  if (( SUBMIT )); then echo "+ $(quote sbatch "$FILE")"; else echo "+ $(quote bash "$FILE")"; fi
  exit 0
fi
cd "$ROOT"
mkdir -p "$LOG_DIR"
batch_script > "$FILE"
if (( SUBMIT )); then run sbatch "$FILE"; else run bash "$FILE"; fi

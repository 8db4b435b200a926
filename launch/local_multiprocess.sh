#!/usr/bin/env bash
# Run N processes of the same training command on this machine, each with its own
# simulated CPU devices, joined by jax.distributed over gloo (docs/environment.md section 3).
# This exercises the multi-host code paths (per-host data shards, global arrays, Orbax
# from every process, host-0 logging) without a cluster.
#
# Usage: launch/local_multiprocess.sh [options] N [--] TRAIN_ARGS...
#   e.g. launch/local_multiprocess.sh 2 --config configs/<file>.py --workdir /tmp/run
#
# Process 0's output is shown here; every process also logs to LOG_DIR/process_<i>.log.
# Ctrl-C stops all processes. If any process fails, the others are stopped and the
# script exits with the failing status.
#
# Options:
#   --devices-per-process K  simulated CPU devices per process (default 4)
#   --port P                 coordinator port on 127.0.0.1 (default: a free port)
#   --module MOD             python module to run (default acformer_jax.train)
#   --python PY              interpreter (default .venv/bin/python, else python3)
#   --log-dir DIR            default logs/local
#   --init-timeout S         start-up deadline for all processes to join (default 120)
#   --dry-run                print the commands instead of running them
#   -h, --help               this help

set -euo pipefail
source "$(dirname "$0")/_common.sh"
ROOT=$(repo_root)

K=4; PORT=""; MODULE=acformer_jax.train; PY=""; LOG_DIR=logs/local; INIT_TIMEOUT=120; N=""
ARGS=()
while (( $# )); do
  case "$1" in
    -h|--help) print_help "$0"; exit 0 ;;
    --devices-per-process) K=$2; shift ;;
    --port) PORT=$2; shift ;;
    --module) MODULE=$2; shift ;;
    --python) PY=$2; shift ;;
    --log-dir) LOG_DIR=$2; shift ;;
    --init-timeout) INIT_TIMEOUT=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; ARGS+=("$@"); break ;;
    *) if [[ -z "$N" && "$1" =~ ^[0-9]+$ ]]; then N=$1; else ARGS+=("$1"); fi ;;
  esac
  shift
done
[[ -n "$N" ]] || die "missing N, the number of processes (see --help)"
(( N >= 1 )) || die "N must be >= 1, got $N"
is_uint "$K" && (( K >= 1 )) || die "--devices-per-process must be a positive integer, got '$K'"
is_uint "$INIT_TIMEOUT" || die "--init-timeout must be whole seconds, got '$INIT_TIMEOUT'"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
if [[ -z "$PORT" ]]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
is_uint "$PORT" || die "--port must be a number, got '$PORT'"

# Environment read by acformer_jax.distributed.initialize().
proc_env() {
  echo ACFORMER_DISTRIBUTED=on ACFORMER_COORDINATOR=127.0.0.1:$PORT ACFORMER_NUM_PROCESSES=$N \
    ACFORMER_PROCESS_ID=$1 ACFORMER_LOCAL_DEVICE_COUNT=$K ACFORMER_EXPECTED_DEVICES=$((N * K)) \
    ACFORMER_INIT_TIMEOUT_S=$INIT_TIMEOUT JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1
}

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < N; i++)); do
    # shellcheck disable=SC2046
    echo "+ $(quote env $(proc_env "$i") "$PY" -m "$MODULE" "${ARGS[@]}") > $LOG_DIR/process_$i.log 2>&1 &"
  done
  exit 0
fi

cd "$ROOT"
mkdir -p "$LOG_DIR"
procs=(); tail_pid=""
stop_all() {
  # TERM, then KILL whatever is left after 5 s; returns as soon as every process has exited.
  local p killer
  for p in "${procs[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  ( sleep 5; for p in "${procs[@]}"; do kill -KILL "$p" 2>/dev/null || true; done ) >/dev/null 2>&1 &
  killer=$!
  for p in "${procs[@]}"; do wait "$p" 2>/dev/null || true; done
  kill "$killer" 2>/dev/null || true
  [[ -n "$tail_pid" ]] && kill "$tail_pid" 2>/dev/null || true
}
trap 'echo; note "interrupted: stopping all $N processes"; stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  : > "$LOG_DIR/process_$i.log"  # exists before tail opens it
  # shellcheck disable=SC2046
  env $(proc_env "$i") "$PY" -m "$MODULE" "${ARGS[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  procs+=($!)
done
note "started $N processes x $K CPU devices (coordinator 127.0.0.1:$PORT), logs in $LOG_DIR/"
# Stream process 0's log; tail exits by itself (after a last read) once process 0 is gone.
tail -n +1 --pid="${procs[0]}" -F "$LOG_DIR/process_0.log" &
tail_pid=$!

# Wait for all; the first failure stops the rest.
remaining=$N; status=0
declare -A done_
while (( remaining > 0 )); do
  for i in "${!procs[@]}"; do
    [[ -n "${done_[$i]:-}" ]] && continue
    if ! kill -0 "${procs[$i]}" 2>/dev/null; then
      rc=0; wait "${procs[$i]}" || rc=$?
      done_[$i]=1; remaining=$((remaining - 1))
      if (( rc != 0 )); then
        sleep 0.5  # let tail print process 0's last lines
        note "process $i exited with status $rc; stopping the others. Last lines of its log:"
        tail -n 20 "$LOG_DIR/process_$i.log" >&2
        stop_all; exit "$rc"
      fi
    fi
  done
  # Through the wait builtin, which a trapped signal interrupts: Ctrl-C is handled at once
  # rather than after the sleep.
  sleep 0.2 & wait $! || true
done
wait "$tail_pid" 2>/dev/null || true
note "all $N processes finished"

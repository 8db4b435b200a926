#!/usr/bin/env bash
# Per-host job control, run on every worker by tpu_pod.sh / tpu_multislice.sh over ssh.
#
# Usage: launch/_worker.sh [--dir DIR] start -- COMMAND [ARGS...]
#        launch/_worker.sh [--dir DIR] stop [--grace SECONDS]
#        launch/_worker.sh [--dir DIR] status
#        launch/_worker.sh [--dir DIR] tail
#
#   start   runs COMMAND detached (own session, survives the ssh disconnect), output to
#           DIR/train.log, pid to DIR/train.pid, exit status to DIR/train.rc when it ends.
#           Refuses to start while a previous job is still running.
#   stop    SIGTERM to the job's process group, SIGKILL after --grace seconds (default 30).
#   status  prints "running PID", "exited RC" or "none"; exit 0 only while running.
#   tail    streams DIR/train.log until the job ends, then exits with its status.
# DIR defaults to ./logs.

set -euo pipefail
DIR=logs
if [[ "${1:-}" == "--dir" ]]; then DIR=$2; shift 2; fi
ACTION=${1:-}; shift || true
LOG="$DIR/train.log"; PID_FILE="$DIR/train.pid"; RC_FILE="$DIR/train.rc"

alive() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

case "$ACTION" in
  start)
    [[ "${1:-}" == "--" ]] && shift
    (( $# > 0 )) || { echo "error: start needs a command after --" >&2; exit 2; }
    mkdir -p "$DIR"
    if alive; then echo "error: a job is already running (pid $(cat "$PID_FILE")); stop it first" >&2; exit 3; fi
    rm -f "$RC_FILE"
    : > "$LOG"  # exists as soon as start returns, for tail
    # setsid: own process group, so stop can signal the whole tree.
    setsid bash -c 'rc_file=$1; shift; "$@"; echo $? > "$rc_file"' _ "$RC_FILE" "$@" \
      > "$LOG" 2>&1 < /dev/null &
    echo $! > "$PID_FILE"
    echo "started pid $! on $(hostname), log $LOG"
    ;;
  stop)
    grace=30
    [[ "${1:-}" == "--grace" ]] && grace=$2
    if ! alive; then echo "no running job"; exit 0; fi
    pid=$(cat "$PID_FILE")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 "$((grace * 10))"); do alive || break; sleep 0.1; done
    if alive; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    [[ -f "$RC_FILE" ]] || echo 143 > "$RC_FILE"  # killed before it could record a status
    echo "stopped pid $pid on $(hostname)"
    ;;
  status)
    if alive; then echo "running $(cat "$PID_FILE")"; exit 0; fi
    if [[ -f "$RC_FILE" ]]; then echo "exited $(cat "$RC_FILE")"; else echo "none"; fi
    exit 1
    ;;
  tail)
    [[ -f "$LOG" ]] || { echo "error: no log at $LOG" >&2; exit 2; }
    if alive; then tail -n +1 --pid="$(cat "$PID_FILE")" -F "$LOG"; else cat "$LOG"; fi
    rc=$(cat "$RC_FILE" 2>/dev/null || echo 1)
    echo "[job exited with status $rc]"
    exit "$rc"
    ;;
  *)
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same command on every worker (docs/launch.md).
#
# Usage: launch/tpu_pod.sh [options] ACTION [-- TRAIN_ARGS...]
#
# Actions:
#   create   create the queued resource, or reuse it if it exists; wait until ACTIVE
#   setup    copy (or git-clone) the code to every worker and install it with libtpu
#   run      start training on all workers, stream worker 0's log; Ctrl-C stops the job
#            on all workers (use --detach to leave it running)
#   logs     stream worker 0's log again      status   job state on every worker
#   stop     stop the job on every worker     delete   delete the queued resource and VMs
#   up       create + setup + run
# TRAIN_ARGS go to `python -m acformer_jax.train`, e.g.
#   -- --config configs/<file>.py --workdir gs://BUCKET/run1 [--config.key=value ...]
#
# Options:
#   --name NAME            TPU VM (node) name, or node prefix with --num-slices (required)
#   --zone ZONE            e.g. us-east5-a (required; default $ZONE)
#   --project PROJECT      default: gcloud's configured project
#   --accelerator TYPE     v4-N | v5p-N | v5e-N (= v5litepod-N) | v6e-N (default v5p-32)
#   --runtime-version V    TPU VM image (default per generation, see docs/launch.md)
#   --queued-resource ID   default NAME-qr
#   --spot | --reserved    capacity type for create
#   --num-slices N         multi-slice (DCN data parallel); see tpu_multislice.sh
#   --code copy|git        copy this checkout (default) or clone --repo at --ref
#   --repo URL --ref REF   for --code git (ref default main)
#   --remote-dir DIR       code directory on the workers, relative to $HOME (default acformer_jax)
#   --setup-cmd CMD        install command run in the code dir (default: setup.sh + jax[tpu])
#   --libtpu-args ARGS     LIBTPU_INIT_ARGS (default: recommended for the generation)
#   --env KEY=VALUE        extra environment for the job (repeatable)
#   --init-timeout S       start-up deadline for every host to join (default 600)
#   --module MOD           python module to run (default acformer_jax.train)
#   --detach               run: do not stream the log
#   --dry-run              print the exact commands instead of running them
#   -h, --help             this help

set -euo pipefail
source "$(dirname "$0")/_common.sh"
ROOT=$(repo_root)

NAME=""; ZONE=${ZONE:-}; PROJECT=""; ACCEL=v5p-32; RUNTIME=""; QR=""; CAPACITY=""
NUM_SLICES=1; CODE=copy; REPO=""; REF=main; REMOTE_DIR=acformer_jax; SETUP_CMD=""
LIBTPU_ARGS=""; EXTRA_ENV=(); INIT_TIMEOUT=600; MODULE=acformer_jax.train; DETACH=0; ACTION=""
TRAIN_ARGS=()

while (( $# )); do
  case "$1" in
    -h|--help) print_help "$0"; exit 0 ;;
    --name) NAME=$2; shift ;;
    --zone) ZONE=$2; shift ;;
    --project) PROJECT=$2; shift ;;
    --accelerator) ACCEL=$2; shift ;;
    --runtime-version) RUNTIME=$2; shift ;;
    --queued-resource) QR=$2; shift ;;
    --spot) CAPACITY=--spot ;;
    --reserved) CAPACITY=--reserved ;;
    --num-slices) NUM_SLICES=$2; shift ;;
    --code) CODE=$2; shift ;;
    --repo) REPO=$2; shift ;;
    --ref) REF=$2; shift ;;
    --remote-dir) REMOTE_DIR=$2; shift ;;
    --setup-cmd) SETUP_CMD=$2; shift ;;
    --libtpu-args) LIBTPU_ARGS=$2; shift ;;
    --env) [[ "$2" == *=* ]] || die "--env expects KEY=VALUE, got '$2'"; EXTRA_ENV+=("$2"); shift ;;
    --init-timeout) INIT_TIMEOUT=$2; shift ;;
    --module) MODULE=$2; shift ;;
    --detach) DETACH=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) [[ -z "$ACTION" ]] || die "only one action allowed, got '$ACTION' and '$1'"; ACTION=$1 ;;
  esac
  shift
done

case "$ACTION" in
  create|setup|run|logs|status|stop|delete|up) ;;
  "") die "missing ACTION (create|setup|run|logs|status|stop|delete|up); see --help" ;;
  *) die "unknown action '$ACTION'; expected create|setup|run|logs|status|stop|delete|up" ;;
esac
[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required (or set ZONE)"
is_uint "$NUM_SLICES" && (( NUM_SLICES >= 1 )) || die "--num-slices must be a positive integer, got '$NUM_SLICES'"
is_uint "$INIT_TIMEOUT" || die "--init-timeout must be whole seconds, got '$INIT_TIMEOUT'"
[[ "$CODE" == copy || "$CODE" == git ]] || die "--code must be copy or git, got '$CODE'"
[[ "$CODE" == copy || -n "$REPO" ]] || die "--code git needs --repo URL"
if [[ "$ACTION" == run || "$ACTION" == up ]] && (( ${#TRAIN_ARGS[@]} == 0 )); then
  die "no training arguments: add -- --config configs/<file>.py --workdir gs://BUCKET/RUN"
fi

GEN=$(tpu_generation "$ACCEL") || exit 2
ACCEL_TYPE=$(tpu_accelerator_type "$ACCEL")
CHIPS=$(tpu_chips "$ACCEL")
RUNTIME=${RUNTIME:-$(tpu_runtime_version "$GEN")}
QR=${QR:-$NAME-qr}
LIBTPU_ARGS=${LIBTPU_ARGS:-$(libtpu_init_args "$GEN")}
SETUP_CMD=${SETUP_CMD:-"(command -v python3.11 >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv)) && bash launch/setup.sh && .venv/bin/pip install -q \"jax[tpu]==$ACFORMER_JAX_VERSION\""}
GC_LOC=(--zone="$ZONE"); [[ -n "$PROJECT" ]] && GC_LOC+=(--project="$PROJECT")

# Node names: NAME for one slice, NAME-0..NAME-(N-1) for a multi-slice queued resource.
NODES=()
if (( NUM_SLICES == 1 )); then NODES=("$NAME"); else
  for ((i = 0; i < NUM_SLICES; i++)); do NODES+=("$NAME-$i"); done
fi

# Multi-slice: every slice gets the MEGASCALE_* variables libtpu uses to join slices over
# DCN; slice 0's worker 0 is the coordinator (docs/aot_tpu.md, docs/jax_practices.md item 2).
MEGASCALE=0; COORD=""
node_env() {
  (( MEGASCALE )) || return 0
  printf 'export MEGASCALE_COORDINATOR_ADDRESS=%s:8080 MEGASCALE_NUM_SLICES=%s MEGASCALE_SLICE_ID=%s MEGASCALE_PORT=8080 && ' \
    "$COORD" "$NUM_SLICES" "$1"
}

# Runs the shell command $1 on every worker of every node (nodes in parallel).
on_all_workers() {
  local cmd=$1 i pids=() rc=0
  for i in "${!NODES[@]}"; do
    local ssh=(gcloud compute tpus tpu-vm ssh "${NODES[$i]}" "${GC_LOC[@]}" --worker=all
      --command "$(node_env "$i")$cmd")
    if [[ "$DRY_RUN" == 1 ]]; then run "${ssh[@]}"; else run "${ssh[@]}" & pids+=($!); fi
  done
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  return "$rc"
}

CD="cd $(rquote "$REMOTE_DIR")"

do_create() {
  local where=(--node-id="$NAME")
  (( NUM_SLICES > 1 )) && where=(--node-count="$NUM_SLICES" --node-prefix="$NAME")
  local create=(gcloud compute tpus queued-resources create "$QR" "${GC_LOC[@]}"
    --accelerator-type="$ACCEL_TYPE" --runtime-version="$RUNTIME" "${where[@]}")
  [[ -n "$CAPACITY" ]] && create+=("$CAPACITY")
  local describe=(gcloud compute tpus queued-resources describe "$QR" "${GC_LOC[@]}" --format='value(state.state)')
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# reuse $QR if this succeeds, else create it:"; run "${describe[@]}"; run "${create[@]}"
    echo "# then poll every 30 s until the state is ACTIVE:"; run "${describe[@]}"; return
  fi
  if "${describe[@]}" >/dev/null 2>&1; then note "reusing queued resource $QR"; else run "${create[@]}"; fi
  local state
  while true; do
    state=$("${describe[@]}")
    case "$state" in
      ACTIVE) note "$QR is ACTIVE ($ACCEL_TYPE x $NUM_SLICES)"; return ;;
      FAILED|SUSPENDED|SUSPENDING) die "queued resource $QR is $state; delete it and retry" ;;
      *) note "$QR is $state; waiting"; sleep 30 ;;
    esac
  done
}

do_setup() {
  if [[ "$CODE" == copy ]]; then
    local tarball=/tmp/acformer_code_$$.tgz i
    run tar -czf "$tarball" -C "$ROOT" --exclude=./.venv --exclude=./.venv-tpu --exclude=./.git \
      --exclude=./.cache --exclude=./logs .
    for i in "${!NODES[@]}"; do
      run gcloud compute tpus tpu-vm scp "$tarball" "${NODES[$i]}:acformer_code.tgz" "${GC_LOC[@]}" --worker=all
    done
    run rm -f "$tarball"
    on_all_workers "mkdir -p $(rquote "$REMOTE_DIR") && tar -xzf acformer_code.tgz -C $(rquote "$REMOTE_DIR") && $CD && $SETUP_CMD"
  else
    on_all_workers "(test -d $(rquote "$REMOTE_DIR")/.git || git clone -q $(rquote "$REPO") $(rquote "$REMOTE_DIR")) && $CD && git fetch -q origin && git checkout -q $(rquote "$REF") && $SETUP_CMD"
  fi
}

job_env() {
  local env=(ACFORMER_DISTRIBUTED=on ACFORMER_EXPECTED_DEVICES=$((CHIPS * NUM_SLICES))
    ACFORMER_INIT_TIMEOUT_S="$INIT_TIMEOUT" ACFORMER_NUM_SLICES="$NUM_SLICES"
    LIBTPU_INIT_ARGS="$LIBTPU_ARGS" "${EXTRA_ENV[@]}")
  rquote env "${env[@]}"
}

do_stop() { MEGASCALE=0 on_all_workers "$CD && bash launch/_worker.sh stop --grace 30"; }

do_logs() {
  run gcloud compute tpus tpu-vm ssh "${NODES[0]}" "${GC_LOC[@]}" --worker=0 \
    --command "$CD && bash launch/_worker.sh tail"
}

do_run() {
  if (( NUM_SLICES > 1 )); then
    local describe=(gcloud compute tpus tpu-vm describe "${NODES[0]}" "${GC_LOC[@]}"
      --format='value(networkEndpoints[0].ipAddress)')
    if [[ "$DRY_RUN" == 1 ]]; then
      echo "# COORD_IP = internal IP of ${NODES[0]} worker 0:"; run "${describe[@]}"; COORD='$COORD_IP'
    else
      COORD=$("${describe[@]}"); [[ -n "$COORD" ]] || die "could not read the IP of ${NODES[0]}"
    fi
    MEGASCALE=1
  fi
  on_all_workers "$CD && $(job_env) bash launch/_worker.sh start -- .venv/bin/python -m $(rquote "$MODULE" "${TRAIN_ARGS[@]}")"
  (( DETACH )) && { note "detached; stream with: $0 --name $NAME --zone $ZONE logs"; return; }
  [[ "$DRY_RUN" == 1 ]] && { do_logs; echo "# on Ctrl-C:"; do_stop; return; }
  trap 'echo; note "stopping the job on all workers"; do_stop; exit 130' INT TERM
  do_logs
}

case "$ACTION" in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  logs) do_logs ;;
  status) on_all_workers "$CD && bash launch/_worker.sh status || true" ;;
  stop) do_stop ;;
  delete) run gcloud compute tpus queued-resources delete "$QR" "${GC_LOC[@]}" --force --quiet ;;
  up) do_create; do_setup; do_run ;;
esac

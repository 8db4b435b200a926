#!/usr/bin/env bash
# Train on several TPU slices joined over the data-center network (multi-slice, DCN data
# parallel). Same actions and options as tpu_pod.sh, plus a required --num-slices N >= 2.
#
# Usage: launch/tpu_multislice.sh --num-slices N [tpu_pod.sh options] ACTION [-- TRAIN_ARGS...]
#        (see launch/tpu_pod.sh --help; --dry-run prints the exact commands)
#
# What changes against a single slice (docs/launch.md, "Multi-slice"):
#   create   one queued resource with --node-count N --node-prefix NAME: nodes NAME-0..NAME-(N-1)
#   run      each slice gets MEGASCALE_COORDINATOR_ADDRESS (worker 0 of NAME-0, port 8080),
#            MEGASCALE_NUM_SLICES=N, MEGASCALE_SLICE_ID=i and MEGASCALE_PORT; the job sees
#            ACFORMER_NUM_SLICES=N and N x chips devices. The mesh's `data` axis must be a
#            multiple of N so that only data-parallel gradient all-reduces cross DCN; FSDP and
#            tensor parallelism stay inside a slice (ICI).
#   logs     streams worker 0 of NAME-0
# Example:
#   launch/tpu_multislice.sh --num-slices 2 --name acf --zone us-east5-a --accelerator v5p-128 \
#     up -- --config configs/<file>.py --workdir gs://BUCKET/run1

set -euo pipefail
source "$(dirname "$0")/_common.sh"
args=("$@"); n=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -h|--help) print_help "$0"; exit 0 ;;
    --num-slices) n=${args[$((i + 1))]:-} ;;
    --) break ;;
  esac
done
[[ -n "$n" ]] || die "--num-slices N is required (N >= 2; for one slice use tpu_pod.sh)"
is_uint "$n" && (( n >= 2 )) || die "--num-slices must be an integer >= 2, got '$n'"
exec "$(dirname "$0")/tpu_pod.sh" "$@"

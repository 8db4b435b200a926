# Shared helpers for the launch scripts (sourced, not run). See docs/launch.md.
# Spec: docs/jax_practices.md "What acformer_jax should adopt" items 9 and 14 (launch recipes and
# recommended XLA/libtpu flags per chip generation).

# The project's jax pin; libtpu comes from its [tpu] extra (docs/aot_tpu.md section 1).
ACFORMER_JAX_VERSION="0.10.2"

DRY_RUN=${DRY_RUN:-0}

die() { echo "error: $*" >&2; exit 2; }
note() { echo "[$(basename "$0")] $*" >&2; }

# Shell-quotes each argument so the printed line can be pasted back into a shell.
quote() {
  local out="" a
  for a in "$@"; do
    if [[ -n "$a" && "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$a "
    else
      out+="'${a//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${out% }"
}

# Like quote, but with double quotes: for command strings that run on a remote shell and
# are then printed inside single quotes (keeps dry-run output readable).
rquote() {
  local out="" a
  for a in "$@"; do
    if [[ -n "$a" && "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$a "
    else
      a=${a//\\/\\\\}; a=${a//\"/\\\"}; a=${a//\$/\\\$}; a=${a//\`/\\\`}
      out+="\"$a\" "
    fi
  done
  printf '%s' "${out% }"
}

# Runs a command, or only prints it (prefixed with "+ ") under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(quote "$@")"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

# ---------------------------------------------------------------- TPU names (docs/aot_tpu.md section 2)
# User-facing names: v4-N and v5p-N count TensorCores (2 per chip, one JAX device per
# chip); v5e-N (or v5litepod-N) and v6e-N count chips.

tpu_generation() {
  case "$1" in
    v4-[0-9]*) echo v4 ;;
    v5p-[0-9]*) echo v5p ;;
    v5e-[0-9]*|v5litepod-[0-9]*) echo v5e ;;
    v6e-[0-9]*) echo v6e ;;
    *) die "unknown TPU accelerator '$1': expected v4-N, v5p-N, v5e-N (or v5litepod-N) or v6e-N" ;;
  esac
}

tpu_size() { echo "${1##*-}"; }

# Accelerator type as the Cloud TPU API spells it (v5e is "v5litepod").
tpu_accelerator_type() {
  local gen; gen=$(tpu_generation "$1") || exit 2
  case "$gen" in
    v5e) echo "v5litepod-$(tpu_size "$1")" ;;
    *) echo "$1" ;;
  esac
}

# Number of chips (= JAX devices) in one slice.
tpu_chips() {
  local gen n; gen=$(tpu_generation "$1") || exit 2; n=$(tpu_size "$1")
  case "$gen" in
    v4|v5p) (( n % 2 == 0 )) || die "$1: v4/v5p sizes count TensorCores and must be even"; echo $(( n / 2 )) ;;
    *) echo "$n" ;;
  esac
}

# Default TPU VM software (runtime) version per generation (Cloud TPU docs, "TPU software versions").
tpu_runtime_version() {
  case "$1" in
    v4) echo tpu-ubuntu2204-base ;;
    v5e) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) die "no runtime version for generation '$1'" ;;
  esac
}

# ---------------------------------------------------------------- recommended flags (docs/launch.md)
# Collective/compute overlap for FSDP all-gathers and data-parallel all-reduces; the set
# MaxText ships for its LLaMA-7B recipes. All names are accepted by libtpu 0.0.42
# (tests/launch/test_launch_scripts.py compiles with them when libtpu is installed).
_TPU_OVERLAP="--xla_tpu_enable_async_collective_fusion=true --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true --xla_tpu_enable_async_collective_fusion_multiple_steps=true --xla_tpu_overlap_compute_collective_tc=true --xla_enable_async_all_gather=true"
_TPU_DATA_PARALLEL="--xla_tpu_enable_data_parallel_all_reduce_opt=true --xla_tpu_data_parallel_opt_different_sized_ops=true"

libtpu_init_args() {
  case "$1" in
    v4|v5e) echo "$_TPU_DATA_PARALLEL $_TPU_OVERLAP" ;;
    v5p) echo "$_TPU_DATA_PARALLEL $_TPU_OVERLAP --xla_tpu_megacore_fusion_allow_ags=false --xla_enable_async_collective_permute=true --xla_tpu_enable_ag_backward_pipelining=true" ;;
    v6e) echo "--xla_tpu_scoped_vmem_limit_kib=98304 $_TPU_DATA_PARALLEL $_TPU_OVERLAP" ;;
    *) die "no LIBTPU_INIT_ARGS for generation '$1'" ;;
  esac
}

# XLA_FLAGS for NVIDIA GPUs (latency-hiding scheduler, pipelined and combined collectives).
gpu_xla_flags() {
  echo "--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_highest_priority_async_stream=true --xla_gpu_all_reduce_combine_threshold_bytes=67108864 --xla_gpu_all_gather_combine_threshold_bytes=134217728 --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864 --xla_gpu_enable_pipelined_all_gather=true --xla_gpu_enable_pipelined_reduce_scatter=true --xla_gpu_enable_pipelined_all_reduce=true --xla_gpu_enable_while_loop_double_buffering=true"
}

# Repository root (the directory above launch/).
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# Prints "Usage" help from the leading comment block of the calling script.
print_help() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$1"; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

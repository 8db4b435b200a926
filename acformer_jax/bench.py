"""Benchmarks: the paper's speed claim, packing, utilisation, PyTorch comparison, Figure-1 plot.

Usage::

  python -m acformer_jax.bench speed --config configs/bench_cpu_stage1.py \
      --connectors mlp2x_gelu,acformer144,acformer256 [--reps 7] [--json FILE|-]
  python -m acformer_jax.bench packing --config configs/bench_packing.py [--reps 3] [--json FILE|-]
  python -m acformer_jax.bench mfu --config configs/bench_cpu_stage1.py [--connectors acformer144]
  python -m acformer_jax.bench torch [--preset small] [--decode_batches 1,8] [--json FILE|-]
      [--profile DIR]
  python -m acformer_jax.bench plot --speed speed.json --accuracy acc.json --out fig1.png

Connectors are presets (``mlp2x_gelu``, ``acformer64/144/256``), types (``acformer`` keeps
the config's budget) or ``type:K``. With ``--json`` the last stdout line is the result as one
JSON object (also written to FILE unless FILE is ``-``). Spec: ``docs/method.md`` 1.7,
``docs/environment.md`` 4-5. See docs/performance.md.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import List, Optional, Sequence

from absl import flags

SPEED_COLS = (("connector", "connector", "{}"), ("tokens", "visual_tokens", "{}"),
              ("seq", "seq_len", "{}"), ("step s", "step_s", "{:.3f}"),
              ("tok/s", "tokens_per_s", "{:.0f}"), ("GFLOP/step", "model_flops", "{:.3g}"),
              ("xla diff", "xla_rel_diff", "{:+.1%}"), ("GFLOP/s", "achieved_flops_per_s", "{:.1f}"),
              ("speedup", "speedup", "{:.2f}x"), ("FLOP-ideal", "flop_ideal_speedup", "{:.2f}x"),
              ("of ideal", "fraction_of_ideal", "{:.0%}"))
MFU_COLS = (("connector", "connector", "{}"), ("step s", "step_s", "{:.3f}"),
            ("GFLOP/step", "model_flops", "{:.3g}"), ("GFLOP/s", "achieved_flops_per_s", "{:.1f}"),
            ("MFU", "mfu", "{:.1%}"), ("HFU", "hfu", "{:.1%}"),
            ("MFU paired", "mfu_paired_median", "{:.1%}"))


# XLA:CPU flags of ``bench torch`` (docs/performance.md, "What makes our side fast"): on that model (a
# 32k vocabulary, 8 heads of 64) XLA's YNNPACK fusions of matmuls with their elementwise
# neighbours are slower than plain matmuls followed by XLA's own fusions (about 5% on the
# train step, 9% on batch-8 decoding), so they are turned off. ``speed`` and ``mfu`` keep
# XLA's defaults: there the flag slows the short-sequence steps and lowers the measured
# matmul peak (YNNPACK runs the large matmuls). ``--xla_flags`` overrides either default.
CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
DEFAULT_XLA_FLAGS = {"torch": CPU_XLA_FLAGS, "speed": "", "mfu": "", "packing": ""}


def apply_xla_flags(xla: str) -> str:
  """Appends ``flags`` to ``XLA_FLAGS`` before JAX starts its backend; returns the flags
  in effect (unchanged, with a warning, when the backend is already running)."""
  started = bool(getattr(sys.modules.get("jax._src.xla_bridge"), "_backends", None))
  if xla and started:
    print(f"note: JAX is already running; --xla_flags {xla!r} not applied", file=sys.stderr)
  elif xla:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla}".strip()
  return os.environ.get("XLA_FLAGS", "")


def _scale(rows, keys, factor):
  return [{**r, **{k: (r[k] / factor if r.get(k) is not None else None) for k in keys}}
          for r in rows]


def _emit(result, json_path: Optional[str]) -> None:
  if json_path is None:
    return
  text = json.dumps(result, default=float)
  if json_path != "-":
    pathlib.Path(json_path).write_text(text + "\n")
  print(text)


COMMANDS = ("speed", "packing", "mfu", "torch", "plot")
# Own FlagValues: other CLIs (aot, train) define --config in the global absl FLAGS, and tests
# import several of them into one process.
FLAGS = flags.FlagValues()
flags.DEFINE_string("xla_flags", None, f"XLA flags added before JAX starts (default: "
                    f"{CPU_XLA_FLAGS!r} for torch, none otherwise).", flag_values=FLAGS)
flags.DEFINE_string("config", None, "speed/mfu/packing: experiment file (path or path:arg), e.g. "
                    "configs/bench_cpu_stage1.py.", flag_values=FLAGS)
flags.DEFINE_string("connectors", None, "speed/mfu: comma-separated connectors (default: "
                    "config bench.connectors).", flag_values=FLAGS)
flags.DEFINE_integer("reps", None, "Timed repetitions per variant (default: config bench.reps; "
                     "torch: 5).", flag_values=FLAGS)
flags.DEFINE_integer("warmup", None, "Untimed runs after compiling (default: config bench.warmup).",
                     flag_values=FLAGS)
flags.DEFINE_string("json", None, "Also print the JSON result as the last line, and write it to "
                    "this file unless it is '-'.", flag_values=FLAGS)
flags.DEFINE_float("quiet_wait", 0.0, "Before each timed run wait up to this many seconds for a "
                   "quiet machine.", flag_values=FLAGS)
flags.DEFINE_bool("xla_check", True, "speed: cross-check the FLOPs with XLA's cost analysis.",
                  flag_values=FLAGS)
flags.DEFINE_string("matmul_n", "2048,4096", "mfu: square matmul sizes for the peak.",
                    flag_values=FLAGS)
flags.DEFINE_bool("bf16", True, "mfu: also measure a bfloat16 matmul.", flag_values=FLAGS)
flags.DEFINE_enum("preset", "small", ["small", "tiny"], "torch: model preset.", flag_values=FLAGS)
flags.DEFINE_integer("decode_reps", 3, "torch: timed repetitions of generate.", flag_values=FLAGS)
flags.DEFINE_string("decode_batches", "1,8", "torch: generation batch sizes.", flag_values=FLAGS)
flags.DEFINE_string("profile", None, "torch: also trace one train step and one decode step "
                    "per side and write op-category tables and traces to this directory.",
                    flag_values=FLAGS)
flags.DEFINE_integer("threads", 0, "torch: torch threads (0: all cores).", flag_values=FLAGS)
flags.DEFINE_string("speed", None, "plot: JSON written by `bench speed --json FILE`.",
                    flag_values=FLAGS)
flags.DEFINE_string("accuracy", None, "plot: JSON {connector: accuracy} or a list.",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("score", [], "plot: CONNECTOR=FILE, an `evaluate score` output "
                          "(repeatable).", flag_values=FLAGS)
flags.DEFINE_string("metric", "accuracy", "plot: metric read from --score files.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "plot: output PNG.", flag_values=FLAGS)
flags.DEFINE_string("title", "Accuracy vs training step time", "plot: title.", flag_values=FLAGS)
flags.DEFINE_string("ylabel", "accuracy", "plot: y-axis label.", flag_values=FLAGS)


def _reps_warmup(b) -> tuple:
  reps = int(FLAGS.reps if FLAGS.reps is not None else b["reps"])
  warmup = int(FLAGS.warmup if FLAGS.warmup is not None else b["warmup"])
  if reps < 1 or warmup < 0:
    raise ValueError(f"--reps must be >= 1 and --warmup >= 0, got {reps} and {warmup}")
  return reps, warmup


def _log(m: str) -> None:
  print(m, file=sys.stderr, flush=True)


def _load_config():
  from acformer_jax.benchmarking import workload  # pylint: disable=import-outside-toplevel
  if not FLAGS.config:
    raise ValueError("--config is required")
  return workload.load_experiment(FLAGS.config)


def _speed_or_mfu(command: str, xla_flags) -> dict:
  from acformer_jax.benchmarking import speed, workload  # pylint: disable=import-outside-toplevel
  cfg = _load_config()
  b = workload.bench_section(cfg)
  names = [n.strip() for n in (FLAGS.connectors or b["connectors"]).split(",") if n.strip()]
  reps, warmup = _reps_warmup(b)
  if command == "speed":
    res = speed.run_speed(cfg, names, reps=reps, warmup=warmup, xla_check=FLAGS.xla_check,
                          quiet_wait_s=FLAGS.quiet_wait, log=_log)
    rows = _scale(res["connectors"], ("model_flops", "achieved_flops_per_s"), 1e9)
    print(speed.table(rows, SPEED_COLS))
    print(f"baseline {res['baseline']}; step time = median of {reps} interleaved repetitions")
  else:
    sizes = [int(x) for x in FLAGS.matmul_n.split(",") if x.strip()]
    res = speed.run_mfu(cfg, names, reps=reps, warmup=warmup, matmul_n=sizes,
                        bf16=FLAGS.bf16, quiet_wait_s=FLAGS.quiet_wait, log=_log)
    rows = _scale(res["connectors"], ("model_flops", "achieved_flops_per_s"), 1e9)
    print(f"float32 matmul peak: {res['peak_f32_flops'] / 1e9:.1f} GFLOP/s "
          + ", ".join(f"({k}: best {v['best_flops'] / 1e9:.1f}, median {v['median_flops'] / 1e9:.1f})"
                      for k, v in res["matmul_f32"].items()))
    if res["matmul_bf16"]:
      print(f"bfloat16 matmul: {res['matmul_bf16']['best_flops'] / 1e9:.1f} GFLOP/s")
    print(speed.table(rows, MFU_COLS))
  note = speed.quiet_note(res["connectors"])
  if note:
    print(note)
  res["config"] = FLAGS.config
  res["xla_flags"] = xla_flags
  res["batch"], res["text_len"] = workload.shapes_for(cfg)
  return res


def _packing(xla_flags) -> dict:
  from acformer_jax.benchmarking import packing_bench, speed, workload  # pylint: disable=import-outside-toplevel
  cfg = _load_config()
  reps, warmup = _reps_warmup(workload.bench_section(cfg))
  res = packing_bench.run_packing(cfg, reps=reps, warmup=warmup, quiet_wait_s=FLAGS.quiet_wait,
                                  log=_log)
  res["config"], res["xla_flags"] = FLAGS.config, xla_flags
  if FLAGS.json and FLAGS.json != "-":  # written before the tables: a long run is never lost
    pathlib.Path(FLAGS.json).write_text(json.dumps(res, default=float) + "\n")
  print(packing_bench.format_result(res))
  note = speed.quiet_note(list(res["variants"].values()))
  if note:
    print(note)
  return res


def run_command(args: Sequence[str]) -> int:
  """Runs ``args[0]`` (one of :data:`COMMANDS`) with the parsed :data:`FLAGS`."""
  if len(args) != 1 or args[0] not in COMMANDS:
    print(f"error: expected one command of {list(COMMANDS)}, got {list(args)}\n"
          "usage: python -m acformer_jax.bench COMMAND [--flags]; --help lists the flags",
          file=sys.stderr)
    return 2
  command = args[0]
  xla_flags = None
  if command != "plot":
    xla_flags = apply_xla_flags(FLAGS.xla_flags if FLAGS.xla_flags is not None
                                else DEFAULT_XLA_FLAGS[command])
  try:
    if command in ("speed", "mfu"):
      res = _speed_or_mfu(command, xla_flags)
    elif command == "packing":
      res = _packing(xla_flags)
    elif command == "torch":
      from acformer_jax.benchmarking import torch_compare  # pylint: disable=import-outside-toplevel
      res = torch_compare.run(FLAGS)
      res["xla_flags"] = xla_flags
    else:
      from acformer_jax.benchmarking import plot  # pylint: disable=import-outside-toplevel
      res = plot.run(FLAGS)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _emit(res, FLAGS.json)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``argv`` without the program name (default ``sys.argv[1:]``): a command and flags."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--help" in argv or "-h" in argv or "--helpfull" in argv:
    print(__doc__ + "\nFlags:\n" + FLAGS.get_help())
    return 0
  FLAGS.unparse_flags()
  try:
    args: List[str] = FLAGS(["acformer_jax.bench", *argv])[1:]
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return run_command(args)


if __name__ == "__main__":
  sys.exit(main())

"""Benchmarks: the paper's speed claim, utilisation, PyTorch comparison, Figure-1 plot.

Usage::

  python -m acformer_jax.bench speed --config configs/bench_cpu_stage1.py \
      --connectors mlp2x_gelu,acformer144,acformer256 [--reps 7] [--json FILE|-]
  python -m acformer_jax.bench mfu --config configs/bench_cpu_stage1.py [--connectors acformer144]
  python -m acformer_jax.bench torch [--batch 4] [--decode-batches 1,8] [--json FILE|-]
  python -m acformer_jax.bench plot --speed speed.json --accuracy acc.json --out fig1.png

Connectors are presets (``mlp2x_gelu``, ``acformer64/144/256``), types (``acformer`` keeps
the config's budget) or ``type:K``. With ``--json`` the last stdout line is the result as one
JSON object (also written to FILE unless FILE is ``-``). Spec: ``acformer.md`` 1.7,
``environment.md`` 4-5. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Optional, Sequence

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


# XLA:CPU flags of ``bench torch`` (docs/performance.md, "CPU tuning"): on that model (a
# 32k vocabulary, 8 heads of 64) XLA's YNNPACK fusions of matmuls with their elementwise
# neighbours are slower than plain matmuls followed by XLA's own fusions (about 5% on the
# train step, 9% on batch-8 decoding), so they are turned off. ``speed`` and ``mfu`` keep
# XLA's defaults: there the flag slows the short-sequence steps and lowers the measured
# matmul peak (YNNPACK runs the large matmuls). ``--xla-flags`` overrides either default.
CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
DEFAULT_XLA_FLAGS = {"torch": CPU_XLA_FLAGS, "speed": "", "mfu": ""}


def apply_xla_flags(flags: str) -> str:
  """Appends ``flags`` to ``XLA_FLAGS`` before JAX starts its backend; returns the flags
  in effect (unchanged, with a warning, when the backend is already running)."""
  started = bool(getattr(sys.modules.get("jax._src.xla_bridge"), "_backends", None))
  if flags and started:
    print(f"note: JAX is already running; --xla-flags {flags!r} not applied", file=sys.stderr)
  elif flags:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
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


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m acformer_jax.bench", description=__doc__.split("\n")[0])
  p.add_argument("--xla-flags", default=None,
                 help=f"XLA flags added before JAX starts (default: {CPU_XLA_FLAGS!r} for "
                      "torch, none for speed and mfu)")
  sub = p.add_subparsers(dest="command", required=True)
  for name in ("speed", "mfu"):
    s = sub.add_parser(name)
    s.add_argument("--config", required=True, help="experiment file, e.g. configs/bench_cpu_stage1.py")
    s.add_argument("--connectors", default=None, help="comma-separated (default: config bench.connectors)")
    s.add_argument("--reps", type=int, default=None, help="timed repetitions per connector")
    s.add_argument("--warmup", type=int, default=None, help="untimed runs after compiling")
    s.add_argument("--json", default=None, metavar="FILE", help="also print/write the JSON result")
    s.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                   help="before each timed run wait up to S seconds for a quiet machine")
  sub.choices["speed"].add_argument("--no-xla-check", action="store_true",
                                    help="skip the cost_analysis cross-check")
  sub.choices["mfu"].add_argument("--matmul-n", default="2048,4096",
                                  help="square matmul sizes for the peak (default 2048,4096)")
  sub.choices["mfu"].add_argument("--no-bf16", action="store_true", help="skip the bf16 matmul")
  t = sub.add_parser("torch")
  from acformer_jax.benchmarking import torch_compare  # pylint: disable=import-outside-toplevel
  torch_compare.add_arguments(t)
  pl = sub.add_parser("plot")
  from acformer_jax.benchmarking import plot  # pylint: disable=import-outside-toplevel
  plot.add_arguments(pl)
  return p


def _speed_or_mfu(args, xla_flags) -> int:
  from acformer_jax.benchmarking import speed, workload  # pylint: disable=import-outside-toplevel
  cfg = workload.load_experiment(args.config)
  b = workload.bench_section(cfg)
  names = [n.strip() for n in (args.connectors or b["connectors"]).split(",") if n.strip()]
  reps = int(args.reps if args.reps is not None else b["reps"])
  warmup = int(args.warmup if args.warmup is not None else b["warmup"])
  if reps < 1 or warmup < 0:
    raise ValueError(f"--reps must be >= 1 and --warmup >= 0, got {reps} and {warmup}")
  log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
  if args.command == "speed":
    res = speed.run_speed(cfg, names, reps=reps, warmup=warmup,
                          xla_check=not args.no_xla_check, quiet_wait_s=args.quiet_wait, log=log)
    rows = _scale(res["connectors"], ("model_flops", "achieved_flops_per_s"), 1e9)
    print(speed.table(rows, SPEED_COLS))
    print(f"baseline {res['baseline']}; step time = median of {reps} interleaved repetitions")
  else:
    sizes = [int(x) for x in args.matmul_n.split(",") if x.strip()]
    res = speed.run_mfu(cfg, names, reps=reps, warmup=warmup, matmul_n=sizes,
                        bf16=not args.no_bf16, quiet_wait_s=args.quiet_wait, log=log)
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
  res["config"] = args.config
  res["xla_flags"] = xla_flags
  res["batch"], res["text_len"] = workload.shapes_for(cfg)
  _emit(res, args.json)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  xla_flags = None
  if args.command != "plot":
    flags = args.xla_flags if args.xla_flags is not None else DEFAULT_XLA_FLAGS[args.command]
    xla_flags = apply_xla_flags(flags)
  try:
    if args.command in ("speed", "mfu"):
      return _speed_or_mfu(args, xla_flags)
    if args.command == "torch":
      from acformer_jax.benchmarking import torch_compare  # pylint: disable=import-outside-toplevel
      res = torch_compare.run(args)
      res["xla_flags"] = xla_flags
    else:
      from acformer_jax.benchmarking import plot  # pylint: disable=import-outside-toplevel
      res = plot.run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _emit(res, getattr(args, "json", None))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Markdown table of ``python -m acformer_jax.aot --json_out`` reports (docs/aot.md, README).

  python scripts/aot_table.py NAME=report.json [NAME=report.json ...]

One row per report: topology, mesh, rows per chip, remat, per-chip memory (arguments,
temporaries, total against usable HBM), model FLOPs per step, the step time that 50% MFU
would need, compile time and whether it fits. Spec: ``docs/aot_tpu.md`` section 3.
"""
import json
import sys

GIB = 2 ** 30
PEAK = {"v4": 275e12, "v5e": 197e12, "v5p": 459e12, "v6e": 918e12}
HEAD = ("| run | topology (chips) | mesh (data, fsdp, tensor) | rows/chip x accum | remat | "
        "arguments | temporaries | total / HBM per chip | model FLOPs/step | s/step at 50% MFU | "
        "compile | fits |")


def row(name: str, d: dict) -> str:
  r = d["report"]
  mesh = d["mesh"]
  chips = r["num_chips"]
  if r.get("oom_message"):
    mem = ("—", "—", f"compile-time OOM (HBM {r['hbm_bytes'] / GIB:.2f} GiB)")
  else:
    mem = (f"{r['argument_bytes'] / GIB:.2f} GiB", f"{r['temp_bytes'] / GIB:.2f} GiB",
           f"{r['total_bytes'] / GIB:.2f} / {r['hbm_bytes'] / GIB:.2f} GiB "
           f"({100 * r['total_bytes'] / r['hbm_bytes']:.0f}%)")
  flops = d["flops"]["total"]
  t50 = f"{flops / (0.5 * chips * PEAK[r['chip']]):.2f}" if r["fits"] else "—"
  return (f"| {name} | {d['topology']} ({chips}) | ({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']}) | "
          f"{d['per_chip_batch']:g} x {d['grad_accum']} | {d['remat_policy']} | {mem[0]} | {mem[1]} | "
          f"{mem[2]} | {flops:.3e} | {t50} | {r['compile_time_s']:.0f} s | "
          f"{'yes' if r['fits'] else '**no**'} |")


def main(argv) -> int:
  if not argv:
    print(__doc__, file=sys.stderr)
    return 2
  print(HEAD)
  print("|" + " --- |" * HEAD.count(" | ") + " --- |")
  for arg in argv:
    name, sep, path = arg.partition("=")
    if not sep:
      print(f"error: {arg!r}: expected NAME=report.json", file=sys.stderr)
      return 2
    with open(path, encoding="utf-8") as f:
      print(row(name, json.load(f)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

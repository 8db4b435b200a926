"""``bench speed`` and ``bench mfu``: the paper's speed claim and utilisation on this host.

Spec: ``docs/method.md`` 1.7 (speed = ratio of stage-1 step times at the same batch, warm-up
excluded) and ``docs/environment.md`` 4-5 (matmul peak measured in-process; quiet-machine caveat).
"""
from __future__ import annotations

import platform
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from acformer_jax import batch as batch_lib
from acformer_jax import config as config_lib
from acformer_jax.benchmarking import flop_count, matmul, timing, workload

BASELINE = "mlp2x_gelu"


def environment() -> Dict:
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind, "devices_used": 1,
          "host_devices": jax.device_count(), "machine": platform.machine(),
          "load_average": timing.load_average()}


def build_bundles(cfg, names: Sequence[str], log: Callable[[str], None]) -> Dict:
  """One compiled step per connector name, all on the same towers and batch data."""
  base = workload.model_config(cfg)
  b, text = workload.shapes_for(cfg)
  bundles, shared = {}, None
  for name in names:
    mc = workload.variant(base, name)
    batch = workload.make_batch(mc, b, text)
    cfg_v = workload.variant_config(cfg, name, max_length=batch["input_ids"].shape[1])
    bundle = workload.build_step(cfg_v, batch, shared=shared)
    if shared is None:
      shared = {k: bundle.state.params[k] for k in ("vision", "llm")}
    bundles[name] = bundle
    log(f"{name}: {config_lib.num_visual_tokens(mc)} visual tokens, sequence {bundle.seq_len}, "
        f"compiled in {bundle.compile_s:.1f} s")
  return bundles


def _flops_entry(cfg, bundle, xla_check: bool) -> Dict:
  del cfg
  ex = bundle.experiment
  mf = ex.batch_flops(bundle.batch_np)  # real work (= padded here: rows are full)
  out = {"model_flops": mf.total, "vit_flops": mf.vit, "connector_flops": mf.connector,
         "llm_flops": mf.llm, "padded_flops": ex.padded_flops.total,
         "executed_flops": flop_count.executed_flops(ex)}
  if xla_check:
    chk = flop_count.cross_check(ex, bundle.compiled)
    out.update(xla_flops=chk["xla_flops"], xla_rel_diff=chk["rel_diff"])
  return out


def run_speed(cfg, names: Sequence[str], *, reps: int, warmup: int, xla_check: bool = True,
              quiet_wait_s: float = 0.0, log: Callable[[str], None] = print) -> Dict:
  """Times every connector's train step interleaved; FLOPs, speedups, FLOP-ideal speedups."""
  if len(set(names)) != len(names) or not names:
    raise ValueError(f"--connectors must list distinct connectors, got {list(names)}")
  bundles = build_bundles(cfg, names, log)
  entries = {n: _flops_entry(cfg, b, xla_check) for n, b in bundles.items()}
  times = timing.interleaved({n: b.run for n, b in bundles.items()}, reps=reps, warmup=warmup,
                             log=log, quiet_wait_s=quiet_wait_s)
  base = BASELINE if BASELINE in names else names[0]
  quiet_ok = all(times[n]["quiet_median_s"] is not None for n in names)
  rows = []
  for n in names:
    bd, e, t = bundles[n], entries[n], times[n]
    step = t["median_s"]
    tokens = batch_lib.real_tokens(bd.batch_np)
    ideal = entries[base]["model_flops"] / e["model_flops"]
    speedup = times[base]["median_s"] / step
    row = {"connector": n, "type": bd.config.connector.type,
           "visual_tokens": config_lib.num_visual_tokens(bd.config), "seq_len": bd.seq_len,
           "batch": int(bd.batch_np["input_ids"].shape[0]), "step_s": step,
           "tokens_per_s": tokens / step, "samples_per_s": bd.batch_np["input_ids"].shape[0] / step,
           **e, "achieved_flops_per_s": e["model_flops"] / step,
           "speedup": speedup, "flop_ideal_speedup": ideal,
           "fraction_of_ideal": speedup / ideal, "timing": t, "compile_s": bd.compile_s}
    if quiet_ok:
      row["quiet_speedup"] = times[base]["quiet_median_s"] / t["quiet_median_s"]
    rows.append(row)
  return {"command": "speed", "baseline": base, "reps": reps, "warmup": warmup,
          "environment": environment(), "connectors": rows}


def run_mfu(cfg, names: Sequence[str], *, reps: int, warmup: int, matmul_n: Sequence[int],
            bf16: bool = True, quiet_wait_s: float = 0.0,
            log: Callable[[str], None] = print) -> Dict:
  """Matmul peak (float32, bfloat16) and the train step's achieved FLOP/s, interleaved."""
  bundles = build_bundles(cfg, names, log)
  runners = {f"matmul_f32_{n}": matmul.matmul_runner(n, jnp.float32) for n in matmul_n}
  fns: Dict[str, Callable] = {k: v for k, v in runners.items()}
  fns.update({n: b.run for n, b in bundles.items()})
  times = timing.interleaved(fns, reps=reps, warmup=warmup, log=log, quiet_wait_s=quiet_wait_s)
  peaks = {k: matmul.summary(int(k.rsplit("_", 1)[1]), jnp.float32, times[k]["samples_s"])
           for k in runners}
  peak = max(p["best_flops"] for p in peaks.values())
  bf16_res = None
  if bf16:
    bf16_res = matmul.measure(min(matmul_n), jnp.bfloat16, reps=2)
    log(f"bfloat16 matmul {bf16_res['n']}^3: {bf16_res['best_flops'] / 1e9:.1f} GFLOP/s")
  rows: List[Dict] = []
  for n, bd in bundles.items():
    e = _flops_entry(cfg, bd, xla_check=False)
    t = times[n]
    paired = [e["model_flops"] / s / (2.0 * min(matmul_n) ** 3 / m) for s, m in
              zip(t["samples_s"], times[f"matmul_f32_{min(matmul_n)}"]["samples_s"])]
    rows.append({"connector": n, "visual_tokens": config_lib.num_visual_tokens(bd.config),
                 "step_s": t["median_s"], **e,
                 "achieved_flops_per_s": e["model_flops"] / t["median_s"],
                 "mfu": e["model_flops"] / t["median_s"] / peak,
                 "hfu": e["executed_flops"] / t["median_s"] / peak,
                 "mfu_paired_median": statistics.median(paired), "timing": t})
  return {"command": "mfu", "peak_f32_flops": peak, "matmul_f32": peaks, "matmul_bf16": bf16_res,
          "environment": environment(), "connectors": rows}


def table(rows: Sequence[Dict], cols: Sequence[tuple]) -> str:
  """Plain-text table: ``cols`` = ``(header, key, format)``."""
  head = [h for h, _, _ in cols]
  body = [[("-" if r.get(k) is None else f.format(r[k])) for _, k, f in cols] for r in rows]
  widths = [max(len(x) for x in col) for col in zip(head, *body)]
  line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
  return "\n".join([line(head)] + [line(b) for b in body])


def quiet_note(rows: Sequence[Dict]) -> Optional[str]:
  loads = [r["timing"]["foreign_cores_median"] for r in rows
           if r["timing"]["foreign_cores_median"] is not None]
  if not loads:
    return None
  worst = max(loads)
  msg = f"foreign CPU load during timing: median {worst:.2f} cores (worst connector)"
  if worst >= timing.QUIET_CORES:
    msg += " -- the machine was NOT quiet; treat the times as upper bounds"
  return msg

"""Where the time of a step goes, by op category, on our side (XLA:CPU) and on torch's.

JAX: a ``jax.profiler`` trace of the compiled program. XLA:CPU records one event per
executed op (thunk: ``args.hlo_module``, ``args.hlo_op``, and an ``end:`` event when an
asynchronous one finishes); each op is classified, and its FLOPs counted, from the
optimised HLO text (``Compiled.as_text()``). Ops may overlap, so wall time is split among
the ops running at each instant (:func:`attribute`). torch: ``torch.profiler`` self CPU
time per aten op (ops run one at a time on the calling thread), FLOPs from ``with_flops``.
Both sides share :data:`CATEGORIES`; the HLO is read by :mod:`hlo_ops`. Used by ``bench torch
--profile DIR``.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import os
import re
import time
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from acformer_jax.benchmarking.hlo_ops import module_name

CATEGORIES = ("gemm", "conv", "attention", "elementwise", "data_movement", "optimizer",
              "collective", "framework", "other")
GEMM_LIKE = ("gemm", "conv")


# ----------------------------------------------------------------------------- trace side

def trace_file(trace_dir: str) -> str:
  """The newest ``*.trace.json.gz`` written by ``jax.profiler`` under ``trace_dir``."""
  files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}/plugins/profile")
  return files[-1]


def op_events(path: str) -> List[Tuple[str, str, float, float]]:
  """``(hlo_module, hlo_op, start s, end s)`` of every executed op of a trace.

  XLA:CPU's event for an op covers only its launch when the op runs asynchronously (dots
  and convolutions on the intra-op pool); such an op ends with the next ``end: <op>`` event.
  """
  with gzip.open(path, "rt") as f:
    events = sorted((e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"),
                    key=lambda e: e["ts"])
  ends = collections.defaultdict(list)
  for e in events:
    if e["name"].startswith("end: "):
      ends[e["name"][5:]].append(e["ts"] + e.get("dur", 0.0))
  out, used = [], collections.Counter()
  for e in events:
    if "hlo_op" not in e.get("args", {}):
      continue
    op, start = e["args"]["hlo_op"], e["ts"]
    end, queue = start + e.get("dur", 0.0), ends[op]
    while used[op] < len(queue) and queue[used[op]] < start:
      used[op] += 1  # an end whose start is not in the trace
    if used[op] < len(queue):
      end = max(end, queue[used[op]])
      used[op] += 1
    out.append((e["args"]["hlo_module"], op, start * 1e-6, end * 1e-6))
  return out


def attribute(intervals: Sequence[Tuple[str, float, float]]) -> Tuple[Dict[str, float], float]:
  """Splits wall time among ``(key, start, end)`` intervals: each instant goes in equal
  parts to the intervals open then. Returns seconds per key and the time covered."""
  points = sorted([(a, 1, i) for i, (_, a, _) in enumerate(intervals)]
                  + [(b, -1, i) for i, (_, _, b) in enumerate(intervals)],
                  key=lambda p: (p[0], p[1]))
  secs, active, last, covered = collections.Counter(), set(), 0.0, 0.0
  for t, kind, i in points:
    if active and t > last:
      for j in active:
        secs[intervals[j][0]] += (t - last) / len(active)
      covered += t - last
    last = t
    if kind == 1:
      active.add(i)
    else:
      active.discard(i)
  return dict(secs), covered


def jax_breakdown(events: Iterable[Tuple[str, str, float, float]], tables: Mapping[str, Mapping],
                  *, per: float = 1.0) -> Dict:
  """Wall seconds (:func:`attribute`) and FLOPs per category of the ops of the modules in
  ``tables`` (module name -> :func:`hlo_op_table`), divided by ``per`` (e.g. the steps in
  the trace). Control ops (``while`` ...) are left out: the ops inside have their own
  events. ``span_s``: first op start to last op end; ``idle_s``: the part of the span with
  no op running; ``unmatched_s``: ops the tables lack (counted as ``other``)."""
  rows, unmatched = [], 0.0
  for mod, op, a, b in events:
    if mod not in tables:
      continue
    row = tables[mod].get(op)
    if row is None:
      unmatched += b - a
      row = {"category": "other", "flops": 0.0, "batched": False}
    if row["category"] != "control":
      kind = re.sub(r"\.\d+$", "", op) + (" (batched)" if row["batched"] else "")
      rows.append(((kind, row["category"], row["flops"]), a, b))
  by_op, covered = attribute(rows)
  secs, flops, kind_s, kind_f = (collections.Counter() for _ in range(4))
  for (kind, cat, _), t in by_op.items():
    secs[cat] += t
    kind_s[kind, cat] += t
  for (kind, cat, fl), _, _ in rows:
    flops[cat] += fl
    kind_f[kind, cat] += fl
  span = max(b for _, _, b in rows) - min(a for _, a, _ in rows) if rows else 0.0
  return _finish(secs, flops, per, unmatched_s=unmatched / per, span_s=span / per,
                 idle_s=(span - covered) / per,
                 top=_top(kind_s, kind_f, per))


# ------------------------------------------------------------------------------- torch

_T_GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv",
           "aten::dot", "aten::addbmm"}
_T_MOVE_EXACT = {"t", "to", "cat", "stack", "view", "numpy_T"}
_T_MOVE_PREFIX = ("copy", "clone", "contiguous", "index", "embedding", "masked_", "gather",
                  "scatter", "transpose", "permute", "reshape", "_reshape", "expand", "slice",
                  "select", "unsqueeze", "squeeze", "as_strided", "_to_copy", "narrow", "split",
                  "chunk", "zero", "fill", "empty", "zeros", "ones", "flatten", "detach", "alias",
                  "resolve", "lift", "_unsafe_view", "new_", "full", "arange", "unbind", "view_",
                  "_cat")


def classify_torch(name: str) -> str:
  """Category of a torch profiler event name (aten ops; anything else is framework time)."""
  if name in _T_GEMM:
    return "gemm"
  if "conv" in name:
    return "conv"
  if "scaled_dot_product" in name or "flash_attention" in name:
    return "attention"
  if "_foreach" in name or "adam" in name.lower() or name.startswith("Optimizer."):
    return "optimizer"
  if not name.startswith("aten::"):
    return "framework"
  op = name[len("aten::"):]
  if op in _T_MOVE_EXACT or op.startswith(_T_MOVE_PREFIX):
    return "data_movement"
  return "elementwise"


def torch_events(prof) -> List[Tuple[str, float, float]]:
  """``(name, self seconds, flops)`` of every event of a finished ``torch.profiler``."""
  return [(e.name, e.self_cpu_time_total * 1e-6, float(getattr(e, "flops", 0) or 0))
          for e in prof.events()]


def torch_breakdown(events: Iterable[Tuple[str, float, float]], *, per: float = 1.0) -> Dict:
  """Self seconds and GEMM/conv FLOPs per category, divided by ``per``."""
  secs, flops, name_s, name_f = (collections.Counter() for _ in range(4))
  for name, dur, fl in events:
    cat = classify_torch(name)
    secs[cat] += dur
    name_s[name] += dur
    if cat in GEMM_LIKE:
      flops[cat] += fl
      name_f[name] += fl
  return _finish(secs, flops, per, top=_top({(n, classify_torch(n)): t for n, t in name_s.items()},
                                            {(n, classify_torch(n)): f for n, f in name_f.items()},
                                            per))


def _top(secs: Mapping[Tuple[str, str], float], flops: Mapping[Tuple[str, str], float],
         per: float, n: int = 12) -> List[Dict]:
  """The ``n`` ``(op kind, category)`` with the most time: ``{op, category, s, gflop_per_s}``."""
  best = sorted(secs, key=lambda k: -secs[k])[:n]
  return [{"op": k[0], "category": k[1], "s": secs[k] / per,
           "gflop_per_s": flops.get(k, 0.0) / secs[k] / 1e9 if flops.get(k) and secs[k] > 0
           else None} for k in best]


def subtract(a: Dict, b: Dict, per: float) -> Dict:
  """``(a - b) / per`` of two breakdowns (e.g. generate n tokens minus generate 1)."""
  secs = {c: (a["seconds"].get(c, 0.0) - b["seconds"].get(c, 0.0)) for c in CATEGORIES}
  flops = {c: (a["flops"].get(c, 0.0) - b["flops"].get(c, 0.0)) for c in CATEGORIES}
  sub = lambda x, y: x - (y or 0.0)  # noqa: E731
  b_top = {t["op"]: t["s"] for t in b.get("top", [])}
  top = [{**t, "s": sub(t["s"], b_top.get(t["op"])) / per, "gflop_per_s": None}
         for t in a.get("top", [])]
  out = _finish(secs, flops, per, top=sorted(top, key=lambda t: -t["s"]))
  if "wall_s" in a and "wall_s" in b:
    out["wall_s"] = (a["wall_s"] - b["wall_s"]) / per
  return out


def _finish(secs: Mapping[str, float], flops: Mapping[str, float], per: float, **extra) -> Dict:
  secs = {c: secs.get(c, 0.0) / per for c in CATEGORIES if secs.get(c, 0.0)}
  flops = {c: flops.get(c, 0.0) / per for c in CATEGORIES if flops.get(c, 0.0)}
  rate = {c: flops[c] / secs[c] for c in flops if secs.get(c, 0.0) > 0}
  return {"seconds": secs, "flops": flops, "flops_per_s": rate,
          "op_s": sum(secs.values()), **extra}


# ------------------------------------------------------------------------------ running

def with_wall(breakdown: Dict, wall_s: float, per: float = 1.0) -> Dict:
  """Adds the wall time and the part of it no op event covers (host, dispatch, gaps)."""
  return {**breakdown, "wall_s": wall_s / per, "untraced_s": wall_s / per - breakdown["op_s"]}


def trace_jax(fn: Callable[[], object], trace_dir: str) -> Tuple[List, float]:
  """Runs ``fn`` (blocking) once under ``jax.profiler``; returns its op events and wall time."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.profiler.start_trace(trace_dir)
  t = time.perf_counter()
  try:
    fn()
    wall = time.perf_counter() - t
  finally:
    jax.profiler.stop_trace()
  return op_events(trace_file(trace_dir)), wall


def trace_torch(fn: Callable[[], object]) -> Tuple[List, float]:
  """Runs ``fn`` once under ``torch.profiler`` (CPU, FLOPs); returns its events and wall time."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                              record_shapes=True, with_flops=True) as prof:
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
  return torch_events(prof), wall


def save_hlo(directory: str, texts: Iterable[str]) -> str:
  """Writes each HLO module text to ``directory/<module>.hlo.txt``; returns ``directory``."""
  os.makedirs(directory, exist_ok=True)
  for text in texts:
    with open(os.path.join(directory, module_name(text) + ".hlo.txt"), "w") as f:
      f.write(text)
  return directory


@contextlib.contextmanager
def capture_hlo(holder, attr: str, out: Dict[str, str]):
  """While active, each call of the jitted ``holder.<attr>`` also stores its optimised HLO
  text in ``out`` (module name -> text; lowered again from the call's abstract arguments,
  before donation, so the names match the executed program)."""
  import jax  # pylint: disable=import-outside-toplevel
  fn = getattr(holder, attr)

  def spec(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(
        x, jax.Array) else x

  def wrapped(*args, **kwargs):
    text = fn.lower(*jax.tree.map(spec, args), **kwargs).compile().as_text()
    out[module_name(text)] = text
    return fn(*args, **kwargs)
  setattr(holder, attr, wrapped)
  try:
    yield out
  finally:
    setattr(holder, attr, fn)


# ---------------------------------------------------------------------------- reporting

def table(columns: Mapping[str, Dict]) -> str:
  """Markdown table: a row per category (seconds and share of op time), a column per run,
  then op time, wall, untraced time and the GEMM/conv GFLOP/s."""
  names = list(columns)
  lines = ["| category | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]

  def cell(b, c):
    s = b["seconds"].get(c, 0.0)
    return f"{_ms(s)} ({s / b['op_s']:.0%})" if b["op_s"] > 0 and s else "-"
  cats = [c for c in CATEGORIES if any(columns[n]["seconds"].get(c) for n in names)]
  for c in cats:
    lines.append(f"| {c} | " + " | ".join(cell(columns[n], c) for n in names) + " |")
  lines.append("| **all ops** | " + " | ".join(_ms(columns[n]["op_s"]) for n in names) + " |")
  for key, label in (("wall_s", "wall"), ("untraced_s", "wall - ops (host, gaps)")):
    lines.append(f"| {label} | " + " | ".join(
        _ms(columns[n][key]) if key in columns[n] else "-" for n in names) + " |")
  for c in GEMM_LIKE:
    if any(c in columns[n]["flops_per_s"] for n in names):
      lines.append(f"| {c} GFLOP/s | " + " | ".join(
          f"{columns[n]['flops_per_s'][c] / 1e9:.1f}" if c in columns[n]["flops_per_s"] else "-"
          for n in names) + " |")
  return "\n".join(lines)


def top_table(columns: Mapping[str, Dict]) -> str:
  """Markdown: the ops with the most time on each side (``name: op (category) time``)."""
  lines = []
  for name, b in columns.items():
    items = [f"{t['op']} ({t['category']}) {_ms(t['s'])}"
             + (f", {t['gflop_per_s']:.1f} GFLOP/s" if t.get("gflop_per_s") else "")
             for t in b.get("top", [])[:8]]
    lines.append(f"* {name}: " + "; ".join(items))
  return "\n".join(lines)


def _ms(s: float) -> str:
  return f"{s * 1e3:.1f} ms" if abs(s) < 1 else f"{s:.3f} s"

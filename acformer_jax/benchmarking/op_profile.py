"""Where the time of a step goes, by op category, on our side (XLA:CPU) and on torch's.

JAX: a ``jax.profiler`` trace of the compiled program. XLA:CPU records one event per
executed op (thunk: ``args.hlo_module``, ``args.hlo_op``, and an ``end:`` event when an
asynchronous one finishes); each op is classified, and its FLOPs counted, from the
optimised HLO text (``Compiled.as_text()``). Ops may overlap, so wall time is split among
the ops running at each instant (:func:`attribute`). torch: ``torch.profiler`` self CPU
time per aten op (ops run one at a time on the calling thread), FLOPs from ``with_flops``.
Both sides share :data:`CATEGORIES`. Used by ``bench torch --profile DIR``.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import math
import os
import re
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

CATEGORIES = ("gemm", "conv", "attention", "elementwise", "data_movement", "optimizer",
              "collective", "framework", "other")
GEMM_LIKE = ("gemm", "conv")
_MOVE = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice",
         "dynamic-update-slice", "concatenate", "pad", "gather", "scatter", "parameter",
         "constant", "tuple", "get-tuple-element", "iota", "reverse", "copy-start", "copy-done",
         "bitcast-convert", "convert"}
_CONTROL = {"while", "conditional", "call", "async-start", "async-done"}
_COLLECTIVE = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OTHER = {"rng", "rng-bit-generator", "rng-get-and-update-state", "infeed", "outfeed",
          "send", "recv", "custom-call", "after-all", "partition-id", "replica-id"}
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_SHAPE = re.compile(r"^\w+\[([\d,]*)\]")


# ----------------------------------------------------------------------------- HLO side

def _split_balanced(s: str, start: int) -> int:
  """Index just after the parenthesis group opening at ``s[start]``."""
  depth = 0
  for i in range(start, len(s)):
    depth += {"(": 1, ")": -1}.get(s[i], 0)
    if depth == 0:
      return i + 1
  return len(s)


def parse_instruction(line: str) -> Optional[Dict]:
  """``{name, shape, opcode, operands, attrs}`` of one HLO text instruction line, or None."""
  line = line.strip()
  if line.startswith("ROOT "):
    line = line[5:]
  if " = " not in line:
    return None
  name, rest = line.split(" = ", 1)
  if rest.startswith("("):
    end = _split_balanced(rest, 0)
  else:
    end = rest.find(" ")
  if end <= 0:
    return None
  shape, rest = rest[:end], rest[end + 1:]
  m = re.match(r"([\w\-]+)\(", rest)
  if not m:
    return None
  close = _split_balanced(rest, m.end() - 1)
  operands = [o.strip().split(" ")[-1].lstrip("%") for o in rest[m.end():close - 1].split(",")
              if o.strip()]
  return {"name": name.lstrip("%"), "shape": shape, "opcode": m.group(1),
          "operands": operands, "attrs": rest[close:]}


def parse_hlo(text: str) -> Dict[str, List[Dict]]:
  """Computation name -> its instructions, from an HLO module's text."""
  comps, current = {}, None
  for line in text.splitlines():
    h = _HEADER.match(line)
    if h:
      current = comps.setdefault(h.group(1), [])
    elif line.strip() == "}":
      current = None
    elif current is not None:
      ins = parse_instruction(line)
      if ins:
        current.append(ins)
  return comps


def dims(shape: str) -> List[int]:
  m = _SHAPE.match(shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _attr_ints(attrs: str, key: str) -> List[int]:
  m = re.search(key + r"=\{([\d,]*)\}", attrs)
  return [int(x) for x in m.group(1).split(",") if x] if m else []


def instruction_flops(ins: Dict, shapes: Mapping[str, str]) -> float:
  """Multiply-add FLOPs (2 per MAC) of a ``dot`` or ``convolution``; 0 for anything else."""
  out = math.prod(dims(ins["shape"]))
  if ins["opcode"] == "dot":
    lhs = dims(shapes.get(ins["operands"][0], ""))
    return 2.0 * out * math.prod(lhs[d] for d in _attr_ints(ins["attrs"], "lhs_contracting_dims"))
  if ins["opcode"] == "convolution":
    kernel = dims(shapes.get(ins["operands"][1], ""))
    m = re.search(r"dim_labels=\w+_(\w+)->", ins["attrs"])
    if not kernel or not m or "o" not in m.group(1):
      return 0.0
    return 2.0 * out * math.prod(kernel) / kernel[m.group(1).index("o")]
  return 0.0


def _batched(ins: Dict) -> bool:
  """A dot with batch dimensions (here: attention scores and their products with V)."""
  return ins["opcode"] == "dot" and bool(_attr_ints(ins["attrs"], "lhs_batch_dims"))


def _called(ins: Dict) -> List[str]:
  return re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)",
                    ins["attrs"])


def _contents(comps, name: str, seen=None) -> Tuple[set, float]:
  """Opcodes (of non-scalar values) and dot/conv FLOPs of computation ``name`` and what it
  calls."""
  seen = set() if seen is None else seen
  if name in seen or name not in comps:
    return set(), 0.0
  seen.add(name)
  shapes = {i["name"]: i["shape"] for i in comps[name]}
  ops, flops = set(), 0.0
  for ins in comps[name]:
    if dims(ins["shape"]) or ins["shape"].startswith("("):  # scalar index maths: ignored
      ops.add(ins["opcode"])
    flops += instruction_flops(ins, shapes)
    for c in _called(ins):
      o, f = _contents(comps, c, seen)
      ops |= o
      flops += f
  return ops, flops


def classify_hlo(opcode: str, inner: Iterable[str] = (), attrs: str = "") -> str:
  """Category of an executed HLO op (``inner``: the opcodes a fusion computes)."""
  inner = set(inner)
  if opcode == "fusion":
    if "dot" in inner:
      return "gemm"
    if "convolution" in inner:
      return "conv"
    return "data_movement" if inner <= _MOVE else "elementwise"
  if opcode == "dot":
    return "gemm"
  if opcode == "convolution":
    return "conv"
  if opcode in _CONTROL:
    return "control"
  if opcode.startswith(_COLLECTIVE):
    return "collective"
  if opcode == "custom-call" and re.search(r"matmul|gemm", attrs, re.I):
    return "gemm"
  if opcode in _OTHER:
    return "other"
  return "data_movement" if opcode in _MOVE else "elementwise"


def hlo_op_table(text: str) -> Dict[str, Dict]:
  """Every executable instruction of an optimised HLO module (not those inside fusions or
  reducers) -> ``{opcode, category, flops}``."""
  comps = parse_hlo(text)
  inner_comps = {c for comp in comps.values() for ins in comp
                 if ins["opcode"] != "call"
                 for c in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", ins["attrs"])}
  table = {}
  for name, comp in comps.items():
    if name in inner_comps:
      continue
    shapes = {i["name"]: i["shape"] for i in comp}
    for ins in comp:
      inner, flops, batched = set(), instruction_flops(ins, shapes), _batched(ins)
      if ins["opcode"] == "fusion":
        for c in _called(ins):
          o, f = _contents(comps, c)
          inner |= o
          flops += f
          batched = batched or any(_batched(i) for i in comps.get(c, []))
      table[ins["name"]] = {"opcode": ins["opcode"], "flops": flops, "batched": batched,
                            "category": classify_hlo(ins["opcode"], inner, ins["attrs"])}
  return table


def module_name(text: str) -> str:
  m = re.match(r"\s*HloModule\s+([\w.\-]+)", text)
  return m.group(1) if m else ""


# --------------------------------------------------------------------------- JAX trace

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

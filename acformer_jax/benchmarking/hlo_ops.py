"""The optimised HLO text of a compiled program, read for profiling: its instructions, the
category of each (``gemm``, ``conv``, ``elementwise``, ``data_movement``, ...) and its FLOPs.
Used by :mod:`op_profile` to classify the ops of a ``jax.profiler`` trace.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

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



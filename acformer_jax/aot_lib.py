"""Ahead-of-time compilation for real TPU topologies on a machine without TPUs.

libtpu's topology descriptions give compile-only TPU devices; a Mesh over them lets
``jit(...).lower(abstract args).compile()`` report per-chip memory and real compile-time
HBM OOMs. Spec: ``docs/aot_tpu.md`` (all sections; names in section 2, env vars in "Env vars",
memory formula and FLOP caveats in section 3) and ``docs/jax_practices.md`` item 14.

libtpu is an optional extra (``jax[tpu]==<jax version>``; jax 0.10.2 pins libtpu
0.0.42.*): everything here except ``topology_devices`` / ``get_topology_mesh`` works
without it. The CLI (``acformer_jax.aot``) builds the train step and calls this module.
"""
from __future__ import annotations

import base64
import dataclasses
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pickle
import re
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

GIB = 1024 ** 3
MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """Per-chip numbers. ``usable_hbm_bytes`` is what the compiler may allocate."""
  name: str
  device_kind: str            # devices[0].device_kind as JAX reports it
  hbm_bytes: int              # vendor figure
  usable_hbm_bytes: int       # available HBM printed by libtpu 0.0.42.1 OOM errors
  peak_bf16_flops: float      # dense bf16 peak per chip
  source: str


# Sources: Google Cloud TPU docs (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e; the
# v6e page tabulates v5e next to v6e) and NVIDIA's H100 / A100 datasheets (dense, no
# sparsity). Usable HBM was measured here by compiling an oversized program for each
# generation with libtpu 0.0.42.1: "exceeds available HBM (15.75G)" and so on.
CHIPS: Dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", "TPU v4", 32 * GIB, int(30.75 * GIB), 275e12,
                   "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2"),
    "v5e": ChipSpec("v5e", "TPU v5 lite", 16 * GIB, int(15.75 * GIB), 197e12,
                    "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2"),
    "v5p": ChipSpec("v5p", "TPU v5", 95 * GIB, int(95.74 * GIB), 459e12,
                    "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e"),
    "v6e": ChipSpec("v6e", "TPU v6 lite", 32 * GIB, int(31.25 * GIB), 918e12,
                    "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM"),
    "h100": ChipSpec("h100", "NVIDIA H100 80GB HBM3", 80 * 10 ** 9, 80 * 10 ** 9, 989e12,
                     "NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 80 GB"),
    "a100": ChipSpec("a100", "NVIDIA A100-SXM4-80GB", 80 * 10 ** 9, 80 * 10 ** 9, 312e12,
                     "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16, 80 GB"),
}

# 2-D slices (v5e, v6e): chips -> libtpu shape.
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_PREFIX = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}


def _shape_3d(chips: int) -> Optional[str]:
  """v4/v5p slice shape for a power-of-two chip count >= 4: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ..."""
  if chips < 4 or chips & (chips - 1):
    return None
  dims = [2, 2, 1]
  while dims[0] * dims[1] * dims[2] < chips:
    smallest = min(dims)
    i = max(j for j in range(3) if dims[j] == smallest)  # double the last smallest axis
    dims[i] *= 2
  return "x".join(map(str, dims))


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU target: user-facing name, libtpu description and its keyword arguments."""
  name: str                  # e.g. "v5p-32"
  generation: str            # v4 | v5e | v5p | v6e
  chips_per_slice: int
  libtpu_name: str           # e.g. "v5:2x2x4"
  kwargs: Tuple[Tuple[str, Any], ...]
  num_slices: int = 1

  @property
  def num_chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  @property
  def chip(self) -> ChipSpec:
    return CHIPS[self.generation]


def parse_topology(name: str, num_slices: int = 1) -> Topology:
  """Maps ``v4-N``, ``v5p-N`` (N = TensorCores, 2 per chip), ``v5e-N`` / ``v5litepod-N``
  and ``v6e-N`` (N = chips) to a libtpu topology (docs/aot_tpu.md section 2)."""
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip().lower())
  if not m:
    raise ValueError(f"unknown TPU topology {name!r}: expected v4-N, v5p-N, v5e-N (or v5litepod-N) "
                     "or v6e-N, e.g. v5p-32 or v5e-16")
  if num_slices < 1:
    raise ValueError(f"num_slices must be >= 1, got {num_slices}")
  gen = "v5e" if m.group(1) == "v5litepod" else m.group(1)
  n = int(m.group(2))
  if gen in ("v4", "v5p"):
    shape = _shape_3d(n // 2) if n % 2 == 0 else None
    ok = [f"{gen}-{8 * 2 ** k}" for k in range(6)]
    kwargs = (("chip_config_name", "megacore"), ("chips_per_host_bounds", (2, 2, 1)))
    chips = n // 2
  else:
    shape = _SHAPES_2D.get(n)
    ok = [f"{gen}-{c}" for c in _SHAPES_2D]
    kwargs = (("chip_config_name", "default"),)
    chips = n
  if shape is None:
    raise ValueError(f"TPU topology {name!r} has no slice shape; valid sizes look like {', '.join(ok)}")
  return Topology(name=f"{gen}-{n}", generation=gen, chips_per_slice=chips,
                  libtpu_name=f"{_PREFIX[gen]}:{shape}", kwargs=kwargs + (("num_slices", num_slices),),
                  num_slices=num_slices)


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def _on_tpu_vm() -> bool:
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _prepare_compile_only_env(topo: Topology) -> None:
  """Env for loading libtpu on a CPU box ("Env vars" table of docs/aot_tpu.md)."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel compiles / tests
  if not _on_tpu_vm():  # these only silence log noise; never override a real TPU VM's values
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    accel = topo.name.replace("v5e-", "v5litepod-")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accel)


def topology_devices(name: str, num_slices: int = 1) -> list:
  """Compile-only TPU devices for a topology name (needs libtpu)."""
  topo = parse_topology(name, num_slices)
  if not libtpu_available():
    raise RuntimeError(
        f"compiling for TPU topology {topo.name} needs libtpu, which is not installed: install the "
        "project's [tpu] extra (pip install \"jax[tpu]==<installed jax version>\")")
  _prepare_compile_only_env(topo)
  from jax.experimental import topologies
  desc = topologies.get_topology_desc(topology_name=topo.libtpu_name, platform="tpu", **dict(topo.kwargs))
  devices = list(desc.devices)
  if len(devices) != topo.num_chips:
    raise RuntimeError(f"libtpu built {len(devices)} devices for {topo.name} x{num_slices}, expected {topo.num_chips}")
  if devices[0].device_kind != topo.chip.device_kind:
    raise RuntimeError(f"libtpu built {devices[0].device_kind!r} devices for {topo.name}, "
                       f"expected {topo.chip.device_kind!r}")
  return devices


def build_mesh(devices: Sequence[Any], mesh_shape: Sequence[int], num_slices: int = 1,
               axis_names: Sequence[str] = MESH_AXES):
  """``sharding.make_mesh`` on ``devices``; with several slices only ``data`` spans DCN."""
  from acformer_jax import sharding  # pylint: disable=import-outside-toplevel
  if num_slices <= 1:
    return sharding.make_mesh(mesh_shape, devices=devices, axis_names=axis_names)
  ici, _ = sharding.resolve_mesh_shape(mesh_shape, (1,) * len(mesh_shape), len(devices))
  if ici[0] % num_slices:
    raise ValueError(f"mesh shape {ici}: the data axis ({ici[0]}) must be a multiple of "
                     f"num_slices={num_slices} so only data parallelism crosses slices")
  dcn = (num_slices,) + (1,) * (len(ici) - 1)
  return sharding.make_mesh((ici[0] // num_slices,) + tuple(ici[1:]), dcn, devices=devices,
                            axis_names=axis_names)


def get_topology_mesh(name: str, mesh_shape: Sequence[int], num_slices: int = 1,
                      axis_names: Sequence[str] = MESH_AXES):
  """A Mesh of compile-only devices for ``name`` (e.g. ``"v5p-32"``, ``(1, -1, 1)``)."""
  return build_mesh(topology_devices(name, num_slices), mesh_shape, num_slices, axis_names)


# ----------------------------------------------------------------------------- reports

def mfu(flops_per_step: float, step_time_s: float, num_chips: int, peak_flops_per_chip: float) -> float:
  """Model FLOPs utilisation: useful FLOPs per second over the chips' peak."""
  if step_time_s <= 0 or num_chips <= 0 or peak_flops_per_chip <= 0:
    raise ValueError("step_time_s, num_chips and peak_flops_per_chip must be > 0")
  return flops_per_step / (step_time_s * num_chips * peak_flops_per_chip)


def transformer_flops(matmul_params: float, num_layers: int, attn_dim: int, seq_len: int,
                      num_sequences: int, *, causal: bool = True, backward: bool = True) -> float:
  """Analytic model FLOPs of a transformer pass (docs/aot_tpu.md section 3: use these, not
  ``cost_analysis()``, which counts a scanned body once and undercounts on TPU).

  ``2 * params * tokens`` for the matmuls plus ``4 * seq^2 * attn_dim`` per layer and
  sequence for QK^T and AV (halved when causal); the backward pass doubles the forward
  (x3 in total). Remat recomputation is not model FLOPs and is not counted.
  ``attn_dim`` is num_heads * head_dim; ``matmul_params`` excludes embedding lookups.
  """
  tokens = seq_len * num_sequences
  attn = 4.0 * num_layers * seq_len * seq_len * attn_dim * num_sequences * (0.5 if causal else 1.0)
  return (3.0 if backward else 1.0) * (2.0 * matmul_params * tokens + attn)


@dataclasses.dataclass
class CompileReport:
  """Per-chip memory of one compiled program against a chip's HBM."""
  target: str
  chip: str
  num_chips: int
  fits: bool
  compile_time_s: float
  hbm_bytes: int
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  generated_code_bytes: int = 0
  peak_bytes: int = 0
  total_bytes: int = 0          # argument + output - alias + temp (MaxText's estimate)
  # temp depends on the libtpu version: 0.0.42 adds its fragmentation estimate to the HLO heap,
  # 0.0.52 reports the heap alone (docs/aot.md, "Accounting"), hence the versions below.
  oom_message: Optional[str] = None
  flops_per_step: Optional[float] = None
  step_time_s: Optional[float] = None
  mfu: Optional[float] = None
  versions: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)  # jax / jaxlib / libtpu
  compiled: Any = dataclasses.field(default=None, repr=False, compare=False)

  def to_dict(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "compiled"}

  def format(self) -> str:
    g = lambda b: f"{b / GIB:.2f} GiB" if b >= GIB / 100 else f"{b / 2 ** 20:.2f} MiB"
    v = self.versions
    built = f" (jax {v.get('jax')}, libtpu {v.get('libtpu')})" if v else ""
    lines = [f"target {self.target} ({self.num_chips} x {self.chip}), compiled in {self.compile_time_s:.1f} s{built}"]
    if self.oom_message:
      lines.append(f"  compile-time OOM: {self.oom_message}")
    else:
      lines += [f"  per chip: arguments {g(self.argument_bytes)}  outputs {g(self.output_bytes)}  "
                f"aliased {g(self.alias_bytes)}  temporaries {g(self.temp_bytes)}",
                f"  total {g(self.total_bytes)}  peak {g(self.peak_bytes)}  of {g(self.hbm_bytes)} HBM "
                f"({100 * self.total_bytes / self.hbm_bytes:.1f}%)"]
    if self.flops_per_step:
      lines.append(f"  model FLOPs/step {self.flops_per_step:.3e}" +
                   (f"; MFU {100 * self.mfu:.1f}% at {self.step_time_s:g} s/step" if self.mfu is not None else ""))
    lines.append("  FITS" if self.fits else "  DOES NOT FIT")
    return "\n".join(lines)


def _memory_fields(compiled) -> dict:
  ma = compiled.memory_analysis()
  arg, out = int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes)
  alias, temp = int(ma.alias_size_in_bytes), int(ma.temp_size_in_bytes)
  return dict(argument_bytes=arg, output_bytes=out, alias_bytes=alias, temp_bytes=temp,
              generated_code_bytes=int(ma.generated_code_size_in_bytes),
              peak_bytes=int(getattr(ma, "peak_memory_in_bytes", 0) or 0),
              total_bytes=arg + out - alias + temp)


def compile_report(jitted_fn, abstract_args: Sequence[Any], abstract_kwargs: Optional[Mapping[str, Any]] = None,
                   *, chip: ChipSpec | str, num_chips: int, target: str = "",
                   flops_per_step: Optional[float] = None, step_time_s: Optional[float] = None) -> CompileReport:
  """Lowers and compiles ``jitted_fn`` for abstract (sharded ``ShapeDtypeStruct``) inputs.

  A RESOURCE_EXHAUSTED compile error (libtpu's compile-time HBM OOM) gives a report
  with ``fits=False`` instead of raising; other errors propagate.
  """
  spec = CHIPS[chip] if isinstance(chip, str) else chip
  base = dict(target=target or spec.name, chip=spec.name, num_chips=num_chips, hbm_bytes=spec.usable_hbm_bytes,
              flops_per_step=flops_per_step, step_time_s=step_time_s, versions=_versions())
  if flops_per_step and step_time_s:
    base["mfu"] = mfu(flops_per_step, step_time_s, num_chips, spec.peak_bf16_flops)
  t0 = time.time()
  try:
    compiled = jitted_fn.lower(*abstract_args, **dict(abstract_kwargs or {})).compile()
  except Exception as e:  # noqa: BLE001 - classify, then re-raise anything but OOM
    msg = str(e)
    if "RESOURCE_EXHAUSTED" not in msg:
      raise
    first = next((l for l in msg.splitlines() if "RESOURCE_EXHAUSTED" in l), msg)
    return CompileReport(fits=False, compile_time_s=time.time() - t0, oom_message=first.strip(), **base)
  fields = _memory_fields(compiled)
  return CompileReport(fits=fields["total_bytes"] <= spec.usable_hbm_bytes, compile_time_s=time.time() - t0,
                       compiled=compiled, **fields, **base)


# ----------------------------------------------------------------------------- executables

def _versions() -> dict:
  out = {}
  for pkg in ("jax", "jaxlib", "libtpu"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def _encode_tree(key: str, tree) -> dict:
  """A PyTreeDef as base64 protobuf; trees with registered dataclasses (e.g. the trainer's
  ``TrainState``), which protobuf cannot hold, are pickled (``<key>_pickle``)."""
  try:
    return {key: base64.b64encode(tree.serialize_using_proto()).decode()}
  except ValueError:
    return {key + "_pickle": base64.b64encode(pickle.dumps(tree)).decode()}


def _decode_tree(side: Mapping[str, Any], key: str):
  from jax.tree_util import PyTreeDef, default_registry
  if key in side:
    return PyTreeDef.deserialize_using_proto(default_registry, base64.b64decode(side[key]))
  return pickle.loads(base64.b64decode(side[key + "_pickle"]))  # same trust as the payload


def save_executable(compiled, path: str, metadata: Optional[Mapping[str, Any]] = None) -> None:
  """Writes a compiled executable to ``path`` plus ``path.json`` (versions, pytrees, SHA-256).

  Meant for TPU executables (compile-only topologies never hit the persistent cache). On
  CPU, an executable that came out of the persistent compilation cache serialises
  without its runtime symbols ("Function wrapped_tanh not found" when run after loading).
  """
  from jax.experimental import serialize_executable
  payload, in_tree, out_tree = serialize_executable.serialize(compiled)
  with open(path, "wb") as f:
    f.write(payload)
  side = {"format": 1, "sha256": hashlib.sha256(payload).hexdigest(), "versions": _versions(),
          **_encode_tree("in_tree", in_tree), **_encode_tree("out_tree", out_tree),
          "metadata": dict(metadata or {})}
  with open(path + ".json", "w") as f:
    json.dump(side, f, indent=1)


def load_executable(path: str, backend: Optional[str] = None):
  """Loads an executable written by ``save_executable`` onto the current devices.

  Only load files you compiled yourself: deserialising an executable unpickles it and
  runs its code (see jax.experimental.serialize_executable). The SHA-256 check catches
  truncated or mixed-up files, and the version check refuses files from another
  jax/jaxlib/libtpu, which would not load or run correctly.
  """
  from jax.experimental import serialize_executable
  side_path = path + ".json"
  if not os.path.exists(side_path):
    raise FileNotFoundError(f"{side_path}: missing metadata written by save_executable")
  with open(side_path) as f:
    side = json.load(f)
  if side.get("format") != 1:
    raise ValueError(f"{side_path}: field 'format' is {side.get('format')!r}, expected 1")
  with open(path, "rb") as f:
    payload = f.read()
  if hashlib.sha256(payload).hexdigest() != side["sha256"]:
    raise ValueError(f"{path}: SHA-256 does not match 'sha256' in {side_path} (corrupt or replaced file)")
  have = _versions()
  for pkg, want in side["versions"].items():
    if have.get(pkg) != want:
      raise ValueError(f"{side_path}: compiled with {pkg}=={want}, but {pkg}=={have.get(pkg)} is "
                       "installed; recompile for this environment")
  in_tree, out_tree = _decode_tree(side, "in_tree"), _decode_tree(side, "out_tree")
  return serialize_executable.deserialize_and_load(payload, in_tree, out_tree, backend=backend)

"""Will this run fit? Compile the real train step for a TPU topology on a machine without TPUs.

  python -m acformer_jax.aot --config configs/vicuna7b_stage2.py:acformer144 --topology v5p-32 \\
      [--step_time_s 1.0] [--save_executable /tmp/step.exe] [--json_out report.json] \\
      [--config.train.global_batch_size=256 ...]

Builds the trainer's train step with the trainer's own builder (``trainer/builder.py``: the
same function, shardings and donation the trainer jits) over an abstract sharded state (``jax.eval_shape``; parameters are never
materialised) on a mesh of libtpu's compile-only devices for the topology, compiles it and
prints per-chip memory (arguments, temporaries, peak, total) against the chip's HBM, the
token slots per step, the analytic padded FLOPs per step (``trainer/flops.py``: every token
and image slot; with packing the real FLOPs are about that times the packing efficiency)
and the MFU the padded step would reach at ``--step_time_s``. Exit status: 0 fits, 1 does not fit (or compile-time HBM OOM), 2 invalid
config / flags. ``--topology`` defaults to ``config.recommended_topology``.

Needs libtpu (the ``.venv-tpu`` environment: ``launch/setup_tpu_aot.sh``); see docs/aot.md.
Spec: ``docs/aot_tpu.md`` sections 2-3 and 5, ``docs/jax_practices.md`` items 3, 10 and 14.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from typing import Any, Dict, Optional

from absl import app, flags
from ml_collections import config_flags

logger = logging.getLogger("acformer_jax.aot")

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_CONFIG = 0, 1, 2


@dataclasses.dataclass
class AotResult:
  """A compile report plus what was compiled (mesh, batch, parameters, FLOPs)."""
  report: Any                    # aot_lib.CompileReport
  topology: str
  num_slices: int
  mesh: Dict[str, int]
  num_hosts: int
  global_batch: int
  grad_accum: int
  per_chip_batch: float          # rows per chip per microbatch
  seq_len: int
  images_per_row: int            # image slots per row (data.max_images_per_row when packing)
  token_slots: int               # rows x seq_len: token slots per step (real tokens = x packing efficiency)
  packing: bool
  remat_policy: str
  param_count: int
  trainable_count: int
  state_bytes_per_chip: int      # analytic: sharded params + optimizer state on one chip
  flops: Dict[str, float]        # vit / connector / llm / total: PADDED FLOPs per step (every slot)

  def to_dict(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "report"}
    d["report"] = self.report.to_dict()
    return d

  def format(self) -> str:
    gib = lambda b: f"{b / 2 ** 30:.2f} GiB"  # noqa: E731
    num = lambda n: f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"  # noqa: E731
    head = (f"{self.topology}{f' x{self.num_slices} slices' if self.num_slices > 1 else ''}: "
            f"mesh {self.mesh}, {self.num_hosts} host(s); global batch {self.global_batch} "
            f"(grad_accum {self.grad_accum}, {self.per_chip_batch:g} rows/chip/microbatch) x "
            f"{self.seq_len} tokens = {self.token_slots} token slots"
            f"{f', packed, {self.images_per_row} image slots/row' if self.packing else ''}; "
            f"remat {self.remat_policy}\n"
            f"  parameters {num(self.param_count)} ({num(self.trainable_count)} trained); "
            f"train state {gib(self.state_bytes_per_chip)} per chip (analytic)\n"
            f"  padded FLOPs/step (every slot): vit {self.flops['vit']:.3e}, connector {self.flops['connector']:.3e}, "
            f"llm {self.flops['llm']:.3e}")
    return head + "\n" + self.report.format()


def _sharded_bytes(abstract_tree) -> int:
  """Bytes of one device's shards of a tree of sharded ShapeDtypeStructs."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  total = 0
  for a in jax.tree.leaves(abstract_tree):
    shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
    total += int(np.prod(shape)) * np.dtype(a.dtype).itemsize
  return total


def _count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(math.prod(a.shape) for a in jax.tree.leaves(tree)))


def resolve_target(config, topology: str, num_slices: Optional[int] = None):
  """``(Topology, slices)`` for ``--topology`` and ``config.mesh``, checked without libtpu.

  Raises ``ConfigError`` naming the mesh fields when they do not match the topology's chips.
  """
  from acformer_jax import aot_lib  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer.validate import ConfigError, resolve_mesh_shape  # pylint: disable=import-outside-toplevel
  dcn = tuple(int(x) for x in config.mesh.dcn_shape)
  slices = math.prod(dcn)
  if num_slices is not None and num_slices != slices:
    raise ConfigError(f"--num_slices={num_slices} but config.mesh.dcn_shape={dcn} spans {slices} "
                      "slice(s): set --config.mesh.dcn_shape so its product is the slice count")
  try:
    topo = aot_lib.parse_topology(topology, slices)
  except ValueError as e:
    raise ConfigError(f"--topology: {e}") from e
  errors: list = []
  if resolve_mesh_shape(config.mesh.shape, dcn, topo.num_chips, errors) is None:
    raise ConfigError(f"{topo.name} x{slices} slice(s) has {topo.num_chips} chips: " + "; ".join(errors))
  return topo, slices


def topology_mesh(config, topology: str, num_slices: Optional[int] = None):
  """``(mesh, topology, num_slices, num_hosts)`` of compile-only devices for ``config.mesh``."""
  from acformer_jax import aot_lib, sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  topo, slices = resolve_target(config, topology, num_slices)
  devices = aot_lib.topology_devices(topo.name, slices)
  mesh = sharding_lib.mesh_from_config(config, devices=devices)
  hosts = len({(getattr(d, "slice_index", 0), getattr(d, "process_index", 0)) for d in devices})
  return mesh, topo, slices, hosts


def experiment_on(config, mesh, hosts: int = 1):
  """The trainer's own builder (``trainer/builder.py``) on ``mesh`` with the trainer's
  start-up sharding check. No parameters are read, so the init sources (checkpoint paths)
  are not required here. ``.lower()`` of the result is what :func:`compile_for_topology`
  compiles."""
  from acformer_jax.trainer import builder  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import state as state_lib  # pylint: disable=import-outside-toplevel
  ex = builder.build_experiment(config, mesh, process_count=hosts, random_init_ok=True)
  state_lib.assert_sufficiently_sharded(ex.abstract_state.params, ex.state_shardings.params, mesh,
                                        float(ex.config.train.sharding_tolerance))
  return ex


def compile_for_topology(config, topology: str, *, num_slices: Optional[int] = None,
                         step_time_s: Optional[float] = None) -> AotResult:
  """Lowers and compiles the trainer's jitted train step for ``topology`` (nothing is allocated).

  Raises ``trainer.validate.ConfigError`` for an invalid config or mesh; a compile-time HBM
  OOM gives a report with ``fits=False``.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from acformer_jax import aot_lib  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import optim  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_threefry_partitionable", True)  # as acformer_jax.train does
  mesh, topo, slices, hosts = topology_mesh(config, topology, num_slices)
  ex = experiment_on(config, mesh, hosts)
  t = ex.config.train
  train_params, _ = optim.split_params(ex.abstract_state.params, ex.trainable)
  f = ex.padded_flops

  class _Lowerable:  # compile_report calls .lower(batch)
    lower = staticmethod(ex.lower)

  report = aot_lib.compile_report(_Lowerable(), (ex.abstract_batch(),), chip=topo.chip,
                                  num_chips=topo.num_chips, target=topo.name + (
                                      f"x{slices}" if slices > 1 else ""),
                                  flops_per_step=f.total, step_time_s=step_time_s)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  accum = int(t.grad_accum_steps)
  bs = ex.batch_shape
  return AotResult(
      report=report, topology=topo.name, num_slices=slices, mesh=dict(mesh.shape), num_hosts=hosts,
      global_batch=bs.rows, grad_accum=accum, per_chip_batch=bs.rows / accum / batch_devices,
      seq_len=bs.length, images_per_row=bs.images_per_row, token_slots=bs.rows * bs.length,
      packing=bool(ex.config.data.get("packing", False)), remat_policy=ex.mc.remat_policy,
      param_count=_count(ex.abstract_state.params), trainable_count=_count(train_params),
      state_bytes_per_chip=_sharded_bytes(ex.abstract_state),
      flops={"vit": f.vit, "connector": f.connector, "llm": f.llm, "total": f.total})


def config_fingerprint(config) -> str:
  """SHA-256 of the config as JSON (stored next to a saved executable)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  text = json.dumps(d, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
  return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- CLI

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU target, e.g. v5p-32, v5e-16, v4-32, v6e-16 "
                                "(default: config.recommended_topology).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", None, "Slices (default: product of config.mesh.dcn_shape).")
_STEP_TIME = flags.DEFINE_float("step_time_s", None, "Step time in seconds for the MFU estimate.")
_SAVE = flags.DEFINE_string("save_executable", None, "Write the compiled executable here (+ .json).")
_JSON = flags.DEFINE_string("json_out", None, "Write the report as JSON here.")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required")
  topology = _TOPOLOGY.value or config.get("recommended_topology")
  if not topology:
    raise app.UsageError("--topology is required (the config has no recommended_topology)")
  from acformer_jax import aot_lib  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer.validate import ConfigError  # pylint: disable=import-outside-toplevel
  if _STEP_TIME.value is not None and _STEP_TIME.value <= 0:
    raise app.UsageError(f"--step_time_s must be > 0, got {_STEP_TIME.value}")
  try:
    resolve_target(config, topology, _NUM_SLICES.value)
    if not aot_lib.libtpu_available():
      print("error: acformer_jax.aot needs libtpu, which this interpreter cannot import; run it "
            "from the .venv-tpu environment (launch/setup_tpu_aot.sh, docs/aot.md)", file=sys.stderr)
      return EXIT_CONFIG
    res = compile_for_topology(config, topology, num_slices=_NUM_SLICES.value,
                               step_time_s=_STEP_TIME.value)
  except (ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CONFIG
  print(res.format(), flush=True)
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as fh:
      json.dump(res.to_dict(), fh, indent=1)
  if _SAVE.value:
    if res.report.compiled is None:
      print(f"not saving {_SAVE.value}: nothing was compiled (OOM)", file=sys.stderr)
    else:
      aot_lib.save_executable(res.report.compiled, _SAVE.value, {
          "topology": res.topology, "num_slices": res.num_slices, "mesh": res.mesh,
          "config_sha256": config_fingerprint(config)})
      print(f"saved executable to {_SAVE.value} (+ .json); load it on the "
            f"{res.topology} workers with aot_lib.load_executable", flush=True)
  return EXIT_FITS if res.report.fits else EXIT_DOES_NOT_FIT


def run() -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host backend; TPU devices are compile-only
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()

"""Logical axis names and the one table that maps them to mesh axes.

Model code names logical axes only (``nn.with_logical_partitioning`` on parameters,
``nn.with_logical_constraint`` on activations). This table is the only place that
knows about the mesh axes ``(data, fsdp, tensor)``; unused axes have size 1, so the
same table serves pure data parallel, FSDP, tensor parallel and their mixes.
Spec: ``docs/jax_practices.md``, "What acformer_jax should adopt", items 1-3.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None for replicated).
# LLM parameters: FSDP over the model dimension, tensor parallel over heads / mlp / vocab.
# ViT parameters use their own names so the frozen tower can be sharded differently.
LOGICAL_AXIS_RULES: Tuple[Tuple[str, object], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # LLM parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # ViT parameters (frozen tower)
    ("vit_embed", "fsdp"),
    ("vit_heads", "tensor"),
    ("vit_mlp", "tensor"),
    ("vit_patch", None),
    ("vit_pos", None),
    # connector parameters
    ("conn_embed", "fsdp"),
    ("conn_heads", "tensor"),
    ("conn_mlp", "tensor"),
    ("conn_queries", None),
    # KV cache
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)


def logical_to_mesh_spec(logical_axes: Sequence[str | None],
                         rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
  """PartitionSpec for one array given its logical axis names."""
  return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def logical_to_sharding(tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Maps a tree of logical PartitionSpecs (from ``nn.get_partition_spec``) to
  ``NamedSharding``s on ``mesh``."""
  mesh_specs = nn.logical_to_mesh(tree, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), mesh_specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def parse_mesh_shape(text: str) -> Tuple[int, int, int]:
  """``"1,-1,1"`` -> ``(1, -1, 1)``: sizes of the ``(data, fsdp, tensor)`` axes."""
  try:
    shape = tuple(int(x) for x in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"expected data,fsdp,tensor sizes (e.g. 1,-1,1), got {text!r}")
  return shape


def parse_mesh_flag(text: str, flag: str = "--mesh") -> Tuple[int, int, int]:
  """:func:`parse_mesh_shape` for a command-line flag: a bad value is an absl usage error."""
  from absl import app  # pylint: disable=import-outside-toplevel
  try:
    return parse_mesh_shape(text)
  except ValueError as e:
    raise app.UsageError(f"{flag}: {e}") from None


def resolve_mesh_shape(shape: Sequence[int], dcn_shape: Sequence[int] = (1, 1, 1),
                       num_devices: Optional[int] = None) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """``(ici, dcn)`` sizes per axis with the one allowed ``-1`` of ``shape`` resolved.

  ``shape`` is per slice (ICI), ``dcn_shape`` across slices; the mesh axis sizes are their
  products. This is the only place that resolves ``-1``.

  Raises:
    ValueError: naming the shapes and the device count when they do not fit.
  """
  num_devices = jax.device_count() if num_devices is None else int(num_devices)
  ici, dcn = [int(x) for x in shape], [int(x) for x in dcn_shape]
  if len(ici) != len(MESH_AXES) or len(dcn) != len(MESH_AXES):
    raise ValueError(f"mesh.shape={tuple(ici)} and mesh.dcn_shape={tuple(dcn)} must have 3 "
                     "entries (data, fsdp, tensor)")
  if any(s == 0 or s < -1 for s in ici) or ici.count(-1) > 1 or any(s < 1 for s in dcn):
    raise ValueError(f"mesh.shape={tuple(ici)}: sizes must be >= 1 with at most one -1; "
                     f"mesh.dcn_shape={tuple(dcn)} must be >= 1")
  slices = int(np.prod(dcn))
  if num_devices % slices:
    raise ValueError(f"mesh.dcn_shape={tuple(dcn)} needs the {num_devices} devices to split into "
                     f"{slices} equal slices")
  per_slice = num_devices // slices
  known = int(np.prod([s for s in ici if s != -1]))
  if -1 in ici:
    if per_slice % known:
      raise ValueError(f"mesh.shape={tuple(ici)}: {per_slice} devices per slice are not "
                       f"divisible by {known}")
    ici[ici.index(-1)] = per_slice // known
  if int(np.prod(ici)) != per_slice:
    raise ValueError(f"mesh.shape={tuple(ici)} x dcn_shape={tuple(dcn)} needs "
                     f"{int(np.prod(ici)) * slices} devices, but {num_devices} are available")
  return tuple(ici), tuple(dcn)


def make_mesh(shape: Sequence[int], dcn_shape: Sequence[int] = (1, 1, 1), devices=None,
              axis_names=MESH_AXES) -> Mesh:
  """The one mesh constructor: ``(data, fsdp, tensor)``, Auto axis types.

  ``shape`` is per slice (one entry may be -1, "the rest"), ``dcn_shape`` across slices; each
  axis has size ``ici * dcn`` (``docs/jax_practices.md`` item 2). One slice: ``jax.make_mesh`` for
  all devices (topology-aware order on TPU), ``mesh_utils.create_device_mesh`` for a TPU
  device list (e.g. libtpu's compile-only devices), a plain reshape otherwise. Several
  slices: ``mesh_utils.create_hybrid_device_mesh`` (slices from ``device.slice_index``; on
  platforms without it, e.g. CPU, each process is a slice). Put data parallelism across
  slices (DCN), FSDP within (ICI).
  """
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  all_devices = devices is None
  devices = list(jax.devices() if devices is None else devices)
  ici, dcn = resolve_mesh_shape(shape, dcn_shape, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(axis_names)
  if int(np.prod(dcn)) > 1:
    granule = not hasattr(devices[0], "slice_index")
    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=granule,
                                               allow_split_physical_axes=True)
  elif all_devices or devices == list(jax.devices()):
    return jax.make_mesh(ici, tuple(axis_names), axis_types=auto)
  elif devices[0].platform == "tpu":
    arr = mesh_utils.create_device_mesh(ici, devices=devices, allow_split_physical_axes=True)
  else:
    arr = np.asarray(devices).reshape(ici)
  return Mesh(arr, tuple(axis_names), axis_types=auto)


def mesh_from_config(config, devices=None) -> Mesh:
  """:func:`make_mesh` from an experiment config's ``mesh.shape`` / ``mesh.dcn_shape``."""
  return make_mesh(tuple(config.mesh.shape), tuple(config.mesh.dcn_shape), devices=devices)

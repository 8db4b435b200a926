"""Logical axis names and the one table that maps them to mesh axes.

Model code names logical axes only (``nn.with_logical_partitioning`` on parameters,
``nn.with_logical_constraint`` on activations). This table is the only place that
knows about the mesh axes ``(data, fsdp, tensor)``; unused axes have size 1, so the
same table serves pure data parallel, FSDP, tensor parallel and their mixes.
Spec: ``jax_practices.md``, "What acformer_jax should adopt", items 1-3.
"""
from __future__ import annotations

from typing import Sequence, Tuple

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


def make_mesh(shape: Sequence[int], devices=None, axis_names=MESH_AXES) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh; one entry of ``shape`` may be -1 ("the rest").

  Uses ``jax.make_mesh`` (topology-aware device order on TPU) with Auto axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape}: {len(devices)} devices not divisible by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(
        f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, "
        f"but {len(devices)} are available")
  auto = (jax.sharding.AxisType.Auto,) * len(axis_names)
  if devices == list(jax.devices()):
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), tuple(axis_names), axis_types=auto)


def make_hybrid_mesh(ici_shape: Sequence[int], dcn_shape: Sequence[int] = (1, 1, 1), devices=None,
                     axis_names=MESH_AXES) -> Mesh:
  """A multi-slice mesh: ``ici_shape`` within a slice (one entry may be -1), ``dcn_shape``
  across slices; each axis has size ``ici * dcn`` (``jax_practices.md`` item 2).

  Uses ``mesh_utils.create_hybrid_device_mesh`` (slices from ``device.slice_index``; on
  platforms without it, e.g. CPU, each process is a slice). With ``dcn_shape`` all ones this
  is :func:`make_mesh`. Put the data-parallel axis across slices (DCN), FSDP within (ICI).
  """
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  dcn = [int(s) for s in dcn_shape]
  if len(dcn) != len(axis_names) or any(s < 1 for s in dcn):
    raise ValueError(f"mesh dcn_shape {tuple(dcn)}: expected {len(axis_names)} sizes >= 1")
  if int(np.prod(dcn)) == 1:
    return make_mesh(ici_shape, devices, axis_names)
  devices = list(jax.devices() if devices is None else devices)
  slices = int(np.prod(dcn))
  if len(devices) % slices:
    raise ValueError(f"mesh dcn_shape {tuple(dcn)}: {len(devices)} devices do not split into "
                     f"{slices} slices")
  ici = list(ici_shape)
  if ici.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(ici)}: at most one axis may be -1")
  if -1 in ici:
    ici[ici.index(-1)] = len(devices) // slices // int(np.prod([s for s in ici if s != -1]))
  granule = not hasattr(devices[0], "slice_index")
  arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=granule,
                                             allow_split_physical_axes=True)
  auto = (jax.sharding.AxisType.Auto,) * len(axis_names)
  return Mesh(arr, tuple(axis_names), axis_types=auto)

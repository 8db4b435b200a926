"""The train batch: the one place that knows its keys, shapes, dtypes and sharding.

A train batch is a per-host dict of numpy arrays with ``B = global_batch / process_count``
rows, ``T = data.max_length`` tokens and ``M = data.max_images_per_row`` image slots
(1 when ``data.packing`` is off), ``S`` = the vision tower's image size:

===============  =======  ==============  ==============================================
key              dtype    shape           meaning
===============  =======  ==============  ==============================================
``images``       float32  [B, M, S, S, 3] normalised pixels; slot m = the row's m-th image
``image_mask``   bool     [B, M]          True = a real image in that slot
``input_ids``    int32    [B, T]          image slots expanded to Nv image-token ids
``labels``       int32    [B, T]          -100 = ignored; the first label of every
                                          segment is -100 (the shift never crosses samples)
``segment_ids``  int32    [B, T]          0 = padding, 1..n = the row's samples in order
``positions``    int32    [B, T]          RoPE positions restarting at 0 per segment
===============  =======  ==============  ==============================================

An unpacked batch is the same spec with one sample per row (segment 1) and ``M = 1``.
Every array is sharded over its leading (``activation_batch``) axis only. The data
pipeline (``data/pipeline.collate``), the train step, AOT and the benchmarks read this
module; nothing else spells the schema out.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from acformer_jax import sharding as sharding_lib

IGNORE_INDEX = -100
KEYS = ("images", "image_mask", "input_ids", "labels", "segment_ids", "positions")
DTYPES = {"images": np.float32, "image_mask": np.bool_, "input_ids": np.int32,
          "labels": np.int32, "segment_ids": np.int32, "positions": np.int32}
# Logical axis names per key; only the leading axis is sharded.
LOGICAL_AXES = {
    "images": ("activation_batch", None, None, None, None),
    "image_mask": ("activation_batch", None),
    "input_ids": ("activation_batch", "activation_length"),
    "labels": ("activation_batch", "activation_length"),
    "segment_ids": ("activation_batch", "activation_length"),
    "positions": ("activation_batch", "activation_length"),
}


@dataclasses.dataclass(frozen=True)
class BatchShape:
  """Sizes of one batch: ``rows`` (B), ``length`` (T), ``images_per_row`` (M), ``image_size`` (S)."""
  rows: int
  length: int
  images_per_row: int
  image_size: int

  def shapes(self) -> Dict[str, Tuple[int, ...]]:
    b, t, m, s = self.rows, self.length, self.images_per_row, self.image_size
    return {"images": (b, m, s, s, 3), "image_mask": (b, m), "input_ids": (b, t),
            "labels": (b, t), "segment_ids": (b, t), "positions": (b, t)}

  def with_rows(self, rows: int) -> "BatchShape":
    return dataclasses.replace(self, rows=int(rows))


def images_per_row(data_config) -> int:
  """``M``: ``data.max_images_per_row`` when ``data.packing`` is on, else 1."""
  if not bool(data_config.get("packing", False)):
    return 1
  m = int(data_config.get("max_images_per_row", 1))
  if m < 1:
    raise ValueError(f"data.max_images_per_row must be >= 1, got {m}")
  return m


def global_shape(config, image_size: Optional[int] = None) -> BatchShape:
  """The global batch of an experiment config (``train.global_batch_size`` rows)."""
  s = int(image_size if image_size is not None else config.model.vision.image_size)
  return BatchShape(rows=int(config.train.global_batch_size), length=int(config.data.max_length),
                    images_per_row=images_per_row(config.data), image_size=s)


def host_shape(config, process_count: int, image_size: Optional[int] = None) -> BatchShape:
  """This host's share of :func:`global_shape` (``global_batch / process_count`` rows)."""
  g = global_shape(config, image_size)
  if g.rows % process_count:
    raise ValueError(f"train.global_batch_size={g.rows} is not divisible by the "
                     f"{process_count} processes")
  return g.with_rows(g.rows // process_count)


def empty(shape: BatchShape) -> Dict[str, np.ndarray]:
  """An all-padding host batch: no images, pad segments, labels ignored, ids 0."""
  out = {k: np.zeros(v, DTYPES[k]) for k, v in shape.shapes().items()}
  out["labels"].fill(IGNORE_INDEX)
  return out


def unpacked(images: np.ndarray, input_ids: np.ndarray, labels: np.ndarray,
             image_mask: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
  """One full-length sample per row (no padding): ``images`` ``[B, S, S, 3]`` -> the spec."""
  b, t = input_ids.shape
  mask = np.ones((b, 1), bool) if image_mask is None else np.asarray(image_mask, bool).reshape(b, 1)
  return {"images": np.asarray(images, np.float32)[:, None], "image_mask": mask,
          "input_ids": np.asarray(input_ids, np.int32), "labels": np.asarray(labels, np.int32),
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}


def check(batch: Mapping[str, Any], shape: Optional[BatchShape] = None) -> BatchShape:
  """Validates keys, dtypes and mutually consistent shapes; returns the batch's shape.

  Raises:
    ValueError: naming the key and what was expected.
  """
  missing = [k for k in KEYS if k not in batch]
  if missing:
    raise ValueError(f"train batch lacks key(s) {missing}; expected {list(KEYS)} "
                     "(acformer_jax/batch.py)")
  for k in KEYS:
    if np.dtype(batch[k].dtype) != np.dtype(DTYPES[k]):
      raise ValueError(f"train batch['{k}'] has dtype {batch[k].dtype}, expected "
                       f"{np.dtype(DTYPES[k]).name}")
  img = batch["images"].shape
  if len(img) != 5:
    raise ValueError(f"train batch['images'] has shape {img}, expected [B, M, S, S, 3]")
  got = BatchShape(rows=int(img[0]), length=int(batch["input_ids"].shape[-1]),
                   images_per_row=int(img[1]), image_size=int(img[2]))
  want = shape or got
  for k, s in want.shapes().items():
    if tuple(batch[k].shape) != s:
      raise ValueError(f"train batch['{k}'] has shape {tuple(batch[k].shape)}, expected {s}")
  return got


def partition_specs(rules=sharding_lib.LOGICAL_AXIS_RULES) -> Dict[str, PartitionSpec]:
  return {k: sharding_lib.logical_to_mesh_spec(v, rules) for k, v in LOGICAL_AXES.items()}


def shardings(mesh: Mesh, rules=sharding_lib.LOGICAL_AXIS_RULES) -> Dict[str, NamedSharding]:
  """``NamedSharding`` per key on ``mesh`` (leading axis over the batch mesh axes)."""
  return {k: NamedSharding(mesh, s) for k, s in partition_specs(rules).items()}


def abstract(shape: BatchShape, mesh: Mesh) -> Dict[str, jax.ShapeDtypeStruct]:
  """Sharded ``ShapeDtypeStruct``s of one GLOBAL batch of ``shape`` (AOT lowering, bench)."""
  sh = shardings(mesh)
  return {k: jax.ShapeDtypeStruct(s, DTYPES[k], sharding=sh[k]) for k, s in shape.shapes().items()}


def to_device(batch: Mapping[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Per-host numpy batch -> global ``jax.Array``s sharded over the batch axes
  (``jax.make_array_from_process_local_data``). Keys outside :data:`KEYS` are dropped."""
  check(batch)
  sh = shardings(mesh)
  return {k: jax.make_array_from_process_local_data(sh[k], np.asarray(batch[k])) for k in KEYS}


def select(batch: Mapping[str, Any]) -> Dict[str, Any]:
  """The spec's keys of ``batch`` (drops extras such as ``sample_index``)."""
  return {k: batch[k] for k in KEYS}


def real_tokens(batch: Mapping[str, Any]) -> int:
  """Non-padding tokens (``segment_ids > 0``) of a host batch."""
  return int(np.sum(np.asarray(batch["segment_ids"]) > 0))


def real_images(batch: Mapping[str, Any]) -> int:
  return int(np.sum(np.asarray(batch["image_mask"])))


def samples(batch: Mapping[str, Any]) -> int:
  """Number of samples (distinct non-zero segments summed over rows)."""
  seg = np.asarray(batch["segment_ids"])
  return int(seg.max(axis=1, initial=0).sum()) if seg.size else 0

"""Streaming safetensors writer: shards + ``model.safetensors.index.json``, tensor by tensor.

Spec: ``docs/jax_practices.md`` item 7 (reverse exporter) and section 9.8 (getting a
JAX-trained VLM back to PyTorch). The tensor list (names, shapes, dtypes) is planned
up front, so every shard's header is written first and each tensor goes straight to
its offset when it arrives: no shard is ever assembled in memory. Files follow the
safetensors format (little-endian u64 header length, JSON header padded to 8 bytes,
contiguous C-order data) and the transformers shard naming.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
import sys
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from acformer_jax.conversion.sources import DTYPE_NAMES

INDEX_FILE = "model.safetensors.index.json"
assert sys.byteorder == "little", "safetensors data is little-endian"


def parse_size(text) -> int:
  """``"5GB"`` / ``"500MB"`` / ``"10KB"`` / an int -> bytes."""
  if isinstance(text, int):
    return text
  t = str(text).strip().upper()
  for unit, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
    if t.endswith(unit):
      return int(float(t[:-len(unit)]) * mult)
  return int(t)


def _header(tensors: Sequence[Tuple[str, Tuple[int, ...], np.dtype]], metadata: Mapping
            ) -> Tuple[bytes, Dict[str, int]]:
  head, offsets, pos = {"__metadata__": dict(metadata)}, {}, 0
  for name, shape, dtype in tensors:
    dtype = np.dtype(dtype)
    if dtype not in DTYPE_NAMES:
      raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
    n = int(np.prod(shape)) * dtype.itemsize
    head[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
    offsets[name] = pos
    pos += n
  raw = json.dumps(head, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw, offsets


class ShardedWriter:
  """Writes planned tensors into ``directory`` in any order; ``close`` writes the index.

  Args:
    directory: output directory (created).
    tensors: ``(name, shape, dtype)`` in file order.
    max_shard_bytes: shard size limit (a tensor larger than it gets its own shard).
    metadata: safetensors ``__metadata__`` (transformers expects ``format: pt``).
  """

  def __init__(self, directory, tensors: Sequence[Tuple[str, Tuple[int, ...], np.dtype]],
               max_shard_bytes: int = 5 << 30, metadata: Mapping = None, stem: str = "model"):
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.spec = {n: (tuple(s), np.dtype(d)) for n, s, d in tensors}
    if len(self.spec) != len(tensors):
      raise ValueError("duplicate tensor names in the export plan")
    shards: List[List] = [[]]
    size = 0
    for n, s, d in tensors:
      nbytes = int(np.prod(s)) * np.dtype(d).itemsize
      if shards[-1] and size + nbytes > max_shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append((n, tuple(s), np.dtype(d)))
      size += nbytes
    count = len(shards)
    self.names = ([f"{stem}.safetensors"] if count == 1 else
                  [f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
    self.location: Dict[str, Tuple[str, int]] = {}
    self.total_size = 0
    for fname, shard in zip(self.names, shards):
      raw, offsets = _header(shard, metadata or {"format": "pt"})
      with open(self.directory / fname, "wb") as f:
        f.write(raw)
        data = sum(int(np.prod(s)) * d.itemsize for _, s, d in shard)
        f.truncate(len(raw) + data)
      for n, _, d in shard:
        self.location[n] = (fname, len(raw) + offsets[n])
        self.total_size += int(np.prod(self.spec[n][0])) * d.itemsize
    self.written = set()

  def write(self, name: str, array: np.ndarray) -> None:
    if name not in self.spec:
      raise KeyError(f"{name} is not in the export plan")
    if name in self.written:
      raise ValueError(f"{name} written twice")
    shape, dtype = self.spec[name]
    array = np.asarray(array)
    if tuple(array.shape) != shape:
      raise ValueError(f"{name}: shape {array.shape}, planned {shape}")
    data = np.ascontiguousarray(array.astype(dtype, copy=False)).reshape(-1).view(np.uint8)
    fname, offset = self.location[name]
    fd = os.open(self.directory / fname, os.O_WRONLY)
    try:
      view, done = memoryview(data), 0
      while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    finally:
      os.close(fd)
    self.written.add(name)

  def close(self) -> List[str]:
    missing = sorted(set(self.spec) - self.written)
    if missing:
      raise ValueError(f"export incomplete, never written: {missing[:20]}")
    if len(self.names) > 1:
      index = {"metadata": {"total_size": self.total_size},
               "weight_map": {n: self.location[n][0] for n in self.spec}}
      (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return list(self.names)


def write_safetensors(path, tensors: Mapping[str, np.ndarray]) -> None:
  """One small safetensors file from in-memory arrays."""
  path = pathlib.Path(path)
  w = ShardedWriter(path.parent, [(k, v.shape, v.dtype) for k, v in tensors.items()],
                    max_shard_bytes=1 << 62, stem=path.name[:-len(".safetensors")])
  for k, v in tensors.items():
    w.write(k, v)
  w.close()

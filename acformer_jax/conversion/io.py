"""Streaming reader for a transformers checkpoint directory (spec ``docs/jax_practices.md`` item 7).

Supported layouts, probed in this order: ``model.safetensors.index.json`` (sharded
safetensors), ``model.safetensors``, ``pytorch_model.bin.index.json`` (sharded pickles),
``pytorch_model.bin``. Pickles are opened with ``torch.load(weights_only=True, mmap=True)``
(never unpickling arbitrary objects). Tensors come out one at a time as numpy arrays;
bfloat16 stays bfloat16 (``ml_dtypes``). Safetensors tensors can also be read as a
slice without loading the rest.
"""
from __future__ import annotations

import json
import pathlib
from typing import Dict, Iterator, List, Tuple

import ml_dtypes
import numpy as np

LAYOUTS = ("model.safetensors.index.json", "model.safetensors",
           "pytorch_model.bin.index.json", "pytorch_model.bin")


def _to_numpy(t) -> np.ndarray:
  """torch tensor -> numpy, bit-exact for bfloat16."""
  import torch  # local: only needed for .bin files and bf16 safetensors
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class CheckpointReader:
  """Random and sequential access to the tensors of one checkpoint directory.

  Use as a context manager. ``keys()``/``shape()`` only read headers (safetensors) or
  the pickle index (``.bin`` under mmap); ``read``/``read_slice``/``items`` load data.
  """

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)
    if not self.directory.is_dir():
      raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
    layout = next((n for n in LAYOUTS if (self.directory / n).is_file()), None)
    if layout is None:
      present = sorted(p.name for p in self.directory.iterdir())
      raise FileNotFoundError(
          f"{self.directory}: no weights found; expected one of {list(LAYOUTS)}, "
          f"directory holds {present}")
    self.layout = layout
    self.format = "safetensors" if "safetensors" in layout else "bin"
    if layout.endswith(".index.json"):
      index_path = self.directory / layout
      try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
      except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{index_path}: not a valid index file (need a 'weight_map'): {e}") from e
      self._file_of: Dict[str, str] = dict(weight_map)
      missing = sorted({f for f in self._file_of.values() if not (self.directory / f).is_file()})
      if missing:
        raise FileNotFoundError(f"{index_path} names shard files that do not exist: {missing}")
    else:
      self._file_of = None
    self._handles: Dict[str, object] = {}

  # --- file access -------------------------------------------------------------
  def files(self) -> List[str]:
    if self._file_of is None:
      return [self.layout]
    return sorted(set(self._file_of.values()))

  def _open(self, name: str):
    if name not in self._handles:
      path = self.directory / name
      if self.format == "safetensors":
        from safetensors import safe_open
        self._handles[name] = safe_open(str(path), framework="pt")
      else:
        import torch
        try:
          state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # pickle errors come in many types
          raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint "
                           f"(zip format, tensors only): {e}") from e
        if not isinstance(state, dict):
          raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        self._handles[name] = state
    return self._handles[name]

  def _file_keys(self, name: str) -> List[str]:
    h = self._open(name)
    return list(h.keys())

  def _locate(self, key: str) -> str:
    if self._file_of is None:
      return self.layout
    if key not in self._file_of:
      raise KeyError(f"{self.directory}: tensor {key!r} is not in the index")
    return self._file_of[key]

  # --- public API --------------------------------------------------------------
  def keys(self) -> List[str]:
    """All tensor names (from the index when sharded, else from the single file)."""
    if self._file_of is not None:
      return sorted(self._file_of)
    return sorted(self._file_keys(self.layout))

  def shape(self, key: str) -> Tuple[int, ...]:
    h = self._open(self._locate(key))
    if self.format == "safetensors":
      return tuple(h.get_slice(key).get_shape())
    return tuple(h[key].shape)

  def read(self, key: str) -> np.ndarray:
    """The whole tensor ``key`` as numpy."""
    h = self._open(self._locate(key))
    return _to_numpy(h.get_tensor(key) if self.format == "safetensors" else h[key])

  def read_slice(self, key: str, index: Tuple[slice, ...]) -> np.ndarray:
    """``tensor[index]`` (basic slices); lazy for safetensors, mmap-backed for ``.bin``."""
    h = self._open(self._locate(key))
    if self.format == "safetensors":
      return _to_numpy(h.get_slice(key)[tuple(index)])
    return _to_numpy(h[key][tuple(index)])

  def items(self) -> Iterator[Tuple[str, np.ndarray]]:
    """Yields ``(key, array)`` one tensor at a time, file by file (one file open at a time)."""
    for name in self.files():
      for key in sorted(self._file_keys(name)):
        if self._file_of is None or self._file_of.get(key) == name:
          yield key, self.read(key)
      self._handles.pop(name, None)

  def close(self):
    self._handles.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

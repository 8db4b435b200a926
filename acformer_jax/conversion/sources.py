"""The one reader of transformers weights: several checkpoints behind one key space.

Spec: ``docs/jax_practices.md`` item 7 and section 9.1 (host RAM during conversion).

A :class:`TensorSource` mounts checkpoint directories (or single ``.bin`` /
``.safetensors`` files) under key prefixes, e.g. a LLaVA checkpoint at ``""`` and its
CLIP tower at ``"vision:"``, and can expose *views*: a virtual key that is a row range
of a real tensor (the official AcFormer ``to_kv`` weight is our ``to_k`` + ``to_v``).
Every HF path (``convert``, the trainer's ``hf_llama:`` / ``hf_clip:`` init, the analysis)
reads through it; :mod:`acformer_jax.conversion.streaming` places the tensors.

Directory layouts, probed in this order: ``model.safetensors.index.json`` (sharded
safetensors), ``model.safetensors``, ``pytorch_model.bin.index.json`` (sharded pickles),
``pytorch_model.bin``. Safetensors slices are read through a short-lived memory map of just
that tensor, closed right after the copy, so pages never pile up in the process's resident
set: a conversion holds its share of the output plus one tensor at most. Pickles are opened
with ``torch.load(weights_only=True, mmap=True)`` (never unpickling arbitrary objects); call
:meth:`TensorSource.release` between parameters to drop their maps. bfloat16 stays bfloat16
(``ml_dtypes``).
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import pathlib
import struct
from typing import Dict, List, Optional, Tuple

import ml_dtypes
import numpy as np

Index = Tuple[slice, ...]
LAYOUTS = ("model.safetensors.index.json", "model.safetensors",
           "pytorch_model.bin.index.json", "pytorch_model.bin")
BIN_SUFFIXES = (".bin", ".pt", ".pth")

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class _Tensor:
  dtype: np.dtype
  shape: Tuple[int, ...]
  begin: int  # absolute byte offset in the file
  end: int


class SafetensorsFile:
  """Header of one ``.safetensors`` file; slices read via a per-read memory map."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    with open(self.path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
      (n,) = struct.unpack("<Q", raw)
      size = self.path.stat().st_size
      if n > size - 8:
        raise ValueError(f"{self.path}: corrupt safetensors header (length {n} > file size)")
      try:
        header = json.loads(f.read(n))
      except ValueError as e:
        raise ValueError(f"{self.path}: corrupt safetensors header ({e})") from None
    self.metadata = header.pop("__metadata__", None) or {}
    self.tensors: Dict[str, _Tensor] = {}
    for key, h in header.items():
      if h["dtype"] not in SAFETENSORS_DTYPES:
        raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {h['dtype']}")
      b, e = h["data_offsets"]
      t = _Tensor(SAFETENSORS_DTYPES[h["dtype"]], tuple(h["shape"]), 8 + n + b, 8 + n + e)
      if t.end > size or t.end - t.begin != t.dtype.itemsize * int(np.prod(t.shape)):
        raise ValueError(f"{self.path}: tensor {key!r} lies outside the file or has a "
                         f"byte size that does not match its shape {t.shape}")
      self.tensors[key] = t

  def keys(self) -> List[str]:
    return list(self.tensors)

  def info(self, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    t = self.tensors[key]
    return t.shape, t.dtype

  def close(self) -> None:
    pass  # no map outlives a read

  def read_slice(self, key: str, index: Index) -> np.ndarray:
    t = self.tensors[key]
    if t.end == t.begin:
      return np.zeros(t.shape, t.dtype)[tuple(index)]
    start = t.begin - t.begin % mmap.ALLOCATIONGRANULARITY
    with open(self.path, "rb") as f:
      mm = mmap.mmap(f.fileno(), t.end - start, access=mmap.ACCESS_READ, offset=start)
    try:
      view = np.frombuffer(mm, t.dtype, count=int(np.prod(t.shape)),
                           offset=t.begin - start).reshape(t.shape)
      out = np.array(view[tuple(index)], copy=True)
      del view
    finally:
      mm.close()
    return out


def _to_numpy(t) -> np.ndarray:
  """torch tensor -> numpy, bit-exact for bfloat16."""
  import torch  # pylint: disable=import-outside-toplevel
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class BinFile:
  """One torch pickle, opened lazily with ``weights_only=True`` and ``mmap``."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    self._state = None

  def _open(self) -> dict:
    if self._state is None:
      import torch  # pylint: disable=import-outside-toplevel
      try:
        state = torch.load(str(self.path), map_location="cpu", weights_only=True, mmap=True)
      except Exception as e:  # pickle errors come in many types
        raise ValueError(f"{self.path}: cannot read as a weights-only torch checkpoint "
                         f"(zip format, tensors only): {e}") from e
      if not isinstance(state, dict):
        raise ValueError(f"{self.path}: expected a state dict, got {type(state).__name__}")
      self._state = state
    return self._state

  def keys(self) -> List[str]:
    return list(self._open())

  def info(self, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    import torch  # pylint: disable=import-outside-toplevel
    t = self._open()[key]
    return tuple(t.shape), _to_numpy(torch.empty(0, dtype=t.dtype)).dtype

  def read_slice(self, key: str, index: Index) -> np.ndarray:
    return np.array(_to_numpy(self._open()[key][tuple(index)]), copy=True)

  def close(self) -> None:
    self._state = None


def _read_index(path: pathlib.Path) -> Dict[str, str]:
  try:
    weight_map = dict(json.loads(path.read_text())["weight_map"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a valid index file (need a 'weight_map'): {e}") from None
  missing = sorted({f for f in weight_map.values() if not (path.parent / f).is_file()})
  if missing:
    raise FileNotFoundError(f"{path} names shard files that do not exist: {missing}")
  return weight_map


@dataclasses.dataclass(frozen=True)
class _View:
  real: str
  start: int
  stop: int


class _Mount:
  """One directory (in a layout of :data:`LAYOUTS`) or one weights file."""

  def __init__(self, path):
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist")
    self.path = path
    self.files: Dict[str, object] = {}   # file name -> SafetensorsFile | BinFile
    self.file_of: Dict[str, str] = {}    # tensor key -> file name
    if path.is_file():
      if path.suffix != ".safetensors" and path.suffix not in BIN_SUFFIXES:
        raise ValueError(f"{path}: expected a directory, a .safetensors or a .bin file")
      self._add(path.parent, [path.name])
      return
    layout = next((n for n in LAYOUTS if (path / n).is_file()), None)
    if layout is None:
      present = sorted(p.name for p in path.iterdir())
      raise FileNotFoundError(f"{path}: no weights found; expected one of {list(LAYOUTS)}, "
                              f"directory holds {present}")
    if not layout.endswith(".index.json"):
      self._add(path, [layout])
      return
    index = _read_index(path / layout)
    self._add(path, sorted(set(index.values())), keys_from_files=layout.startswith("model."))
    if layout.startswith("model."):  # safetensors headers are cheap: check the index
      stray = sorted(k for k, f in index.items() if k not in self.files[f].tensors)
      if stray:
        raise ValueError(f"{path}: the index names tensors that are not in their shard "
                         f"files: {stray[:20]}")
    self.file_of = index

  def _add(self, directory: pathlib.Path, names, keys_from_files: bool = True) -> None:
    for name in names:
      f = SafetensorsFile(directory / name) if name.endswith(".safetensors") \
          else BinFile(directory / name)
      self.files[name] = f
      if keys_from_files:
        for k in f.keys():
          self.file_of.setdefault(k, name)

  def keys(self) -> List[str]:
    return sorted(self.file_of)

  def _file(self, key: str):
    if key not in self.file_of:
      raise KeyError(f"{self.path}: no tensor {key!r}")
    return self.files[self.file_of[key]]

  def info(self, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    return self._file(key).info(key)

  def read_slice(self, key: str, index: Index) -> np.ndarray:
    return self._file(key).read_slice(key, index)

  def release(self):
    for f in self.files.values():
      f.close()


class TensorSource:
  """Mounted checkpoints behind one key space: ``keys``, ``info``, ``read_slice``.

  ``bytes_read`` counts the bytes handed out (a process reading only its shards
  reads about ``1 / process_count`` of the model).
  """

  def __init__(self):
    self._mounts: Dict[str, _Mount] = {}
    self._views: Dict[str, _View] = {}
    self.bytes_read = 0

  def mount(self, prefix: str, path) -> "TensorSource":
    if prefix in self._mounts:
      raise ValueError(f"prefix {prefix!r} is already mounted")
    self._mounts[prefix] = _Mount(path)
    return self

  def describe(self) -> str:
    return ", ".join(f"{p or '(no prefix)'} = {m.path}" for p, m in self._mounts.items())

  def path_of(self, prefix: str) -> pathlib.Path:
    return self._mounts[prefix].path

  def _split(self, key: str) -> Tuple[_Mount, str]:
    best = None
    for p, m in self._mounts.items():
      if key.startswith(p) and (best is None or len(p) > len(best[0])):
        best = (p, m)
    if best is None:
      raise KeyError(key)
    return best[1], key[len(best[0]):]

  def add_view(self, key: str, real: str, start: int, stop: int) -> None:
    """Exposes rows ``start:stop`` (axis 0) of ``real`` as ``key``; hides ``real``."""
    self._views[key] = _View(real, start, stop)

  def keys(self, prefix: Optional[str] = None, raw: bool = False) -> List[str]:
    """Keys (of one mount with ``prefix``); views replace their real tensor unless ``raw``."""
    hidden = set() if raw else {v.real for v in self._views.values()}
    out = [] if prefix is not None or raw else list(self._views)
    for p, m in self._mounts.items():
      if prefix is None or p == prefix:
        out += [p + k for k in m.keys() if p + k not in hidden]
    return sorted(out)

  def info(self, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """``(shape, numpy dtype)`` without reading data."""
    if key in self._views:
      v = self._views[key]
      shape, dtype = self.info(v.real)
      return (v.stop - v.start,) + tuple(shape[1:]), dtype
    m, k = self._split(key)
    return m.info(k)

  def shape(self, key: str) -> Tuple[int, ...]:
    return self.info(key)[0]

  def read_slice(self, key: str, index: Index) -> np.ndarray:
    """``tensor[index]`` for basic slices, reading (about) only those bytes."""
    if key in self._views:
      v = self._views[key]
      first = index[0] if index else slice(None)
      lo, hi, _ = first.indices(v.stop - v.start)
      return self.read_slice(v.real, (slice(v.start + lo, v.start + hi),) + tuple(index[1:]))
    m, k = self._split(key)
    out = m.read_slice(k, index)
    self.bytes_read += out.nbytes
    return out

  def read(self, key: str) -> np.ndarray:
    return self.read_slice(key, (slice(None),) * len(self.shape(key)))

  def release(self) -> None:
    """Drops cached ``.bin`` maps (safetensors reads keep none)."""
    for m in self._mounts.values():
      m.release()

  def __enter__(self) -> "TensorSource":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def has_weights(path) -> bool:
  """Whether ``path`` is a weights file or a directory with a known weights layout."""
  p = pathlib.Path(path)
  if p.is_file():
    return p.suffix == ".safetensors" or p.suffix in BIN_SUFFIXES
  return p.is_dir() and any((p / n).is_file() for n in LAYOUTS)

"""Per-array checksums of saved parameter trees (checkpoints and params exports).

A checksum is independent of how an array is sharded: it is the sum, modulo 2**64, of
``(bits(x_i) + 1) * odd_mix(i)`` over the elements ``x_i`` at global flat index ``i``
(``bits`` = the element's raw bytes as an unsigned integer). Every process adds up the shards
it writes (``replica_id == 0``, so each element is counted once) on the host, and the partial
sums are added across processes. Restoring onto another mesh gives the same number, and any
single changed element changes it (``odd_mix(i)`` is odd, so it is invertible modulo 2**64).

Saved as ``{"algorithm": ALGORITHM, "arrays": {"path/to/leaf": "<16 hex digits>"}}``.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Optional

import jax
import numpy as np

ALGORITHM = "acformer-wsum64-v1"
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0x632BE59BD9B4E019)
_CHUNK = 1 << 22  # elements hashed at once (bounds the host memory of the index array)


class IntegrityError(ValueError):
  """Stored arrays whose checksums differ from the ones recorded when they were written."""


def leaf_name(path) -> str:
  """``(DictKey('llm'), GetAttrKey('params'), ...) -> 'llm/params/...'``."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _bits(data: np.ndarray) -> np.ndarray:
  data = np.ascontiguousarray(data)
  if data.dtype == np.bool_:
    data = data.view(np.uint8)
  size = data.dtype.itemsize
  if size not in (1, 2, 4, 8):
    raise TypeError(f"cannot checksum dtype {data.dtype}")
  return data.view(np.dtype(f"u{size}"))


def block_sum(data: np.ndarray, starts: Iterable[int], shape: Iterable[int]) -> int:
  """Checksum contribution of the block ``data`` placed at ``starts`` in an array of ``shape``."""
  data, starts, shape = np.asarray(data), list(starts), list(shape)
  if data.ndim == 0:
    data, starts, shape = data.reshape(1), [0], [1]
  strides = [int(np.prod(shape[d + 1:], dtype=np.int64)) for d in range(len(shape))]
  bits = _bits(data)
  rows = max(1, _CHUNK // max(1, int(np.prod(data.shape[1:], dtype=np.int64))))
  total = np.uint64(0)
  with np.errstate(over="ignore"):
    inner = np.zeros((), np.uint64)
    for d in range(1, data.ndim):  # flat offsets of one row of the block
      axis = (np.arange(data.shape[d], dtype=np.uint64) + np.uint64(starts[d])) * np.uint64(strides[d])
      inner = np.add.outer(inner, axis)
    for r0 in range(0, data.shape[0], rows):
      r = np.arange(r0, min(r0 + rows, data.shape[0]), dtype=np.uint64) + np.uint64(starts[0])
      idx = np.add.outer(r * np.uint64(strides[0]), inner)
      mix = (idx * _K1 + _K2) | np.uint64(1)
      h = (bits[r0:r0 + len(r)].astype(np.uint64) + np.uint64(1)) * mix
      total = total + np.sum(h, dtype=np.uint64)
  return int(total)


def _leaf_partial(x) -> int:
  """This process's share of one leaf's checksum."""
  if isinstance(x, jax.Array):
    total = 0
    for s in x.addressable_shards:
      if s.replica_id != 0:
        continue
      starts = [sl.indices(n)[0] for sl, n in zip(s.index, x.shape)]
      total += block_sum(np.asarray(s.data), starts, x.shape)
    return total % (1 << 64)
  if jax.process_index() != 0:
    return 0
  arr = np.asarray(x)
  return block_sum(arr, [0] * arr.ndim, arr.shape)


def partial_checksums(tree, prefix: str = "") -> Dict[str, int]:
  """``{leaf name: this process's partial sum}`` of every array leaf of ``tree``."""
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      out[prefix + leaf_name(path)] = _leaf_partial(x)
  return out


def checksums(tree, prefix: str = "") -> Dict[str, str]:
  """``{leaf name: checksum as 16 hex digits}`` over all processes (a collective when
  ``jax.process_count() > 1``: every process must call it)."""
  parts = {k: format(v, "x") for k, v in partial_checksums(tree, prefix).items()}
  if jax.process_count() > 1:
    from acformer_jax.trainer.checkpoint import _gather_json  # pylint: disable=import-outside-toplevel
    gathered = _gather_json(parts)
  else:
    gathered = [parts]
  return {k: format(sum(int(g[k], 16) for g in gathered) % (1 << 64), "016x") for k in parts}


def record(tree, prefix: str = "") -> Dict[str, Any]:
  """The JSON record written next to a saved tree."""
  return {"algorithm": ALGORITHM, "arrays": checksums(tree, prefix)}


def mismatches(tree, saved: Mapping[str, Any], prefix: str = "") -> List[str]:
  """Names of the leaves of ``tree`` whose checksum differs from ``saved`` (leaves that
  ``saved`` does not list are not checked)."""
  if saved.get("algorithm") != ALGORITHM:
    raise IntegrityError(f"unknown checksum algorithm {saved.get('algorithm')!r} (expected {ALGORITHM})")
  want = saved.get("arrays", {})
  got = checksums(tree, prefix)
  return sorted(k for k, v in got.items() if k in want and want[k] != v)


def verify(tree, saved: Optional[Mapping[str, Any]], what: str, prefix: str = "") -> None:
  """Raises :class:`IntegrityError` naming every leaf of ``tree`` that does not match."""
  if saved is None:
    return
  bad = mismatches(tree, saved, prefix)
  if bad:
    shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    raise IntegrityError(f"{what}: {len(bad)} array(s) differ from the checksums recorded when "
                         f"they were written (damaged files): {shown}")


def sidecar(item_dir) -> pathlib.Path:
  """Where the checksums of a params item directory (``.../params``) are kept."""
  p = pathlib.Path(item_dir)
  return p.parent / f"{p.name}_checksums.json"


def write_sidecar(item_dir, rec: Mapping[str, Any]) -> None:
  sidecar(item_dir).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")


def read_sidecar(item_dir) -> Optional[Dict[str, Any]]:
  """The checksums of ``item_dir`` or None when none were written (older exports)."""
  path = sidecar(item_dir)
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise IntegrityError(f"{path}: unreadable checksum file ({e})") from None

"""Generic key-map driven loading: checkpoint directory -> parameter tree, tensor by tensor.

Spec: ``docs/jax_practices.md`` items 3 (abstract-first) and 7 (streaming, table-driven
conversion, each tensor placed directly into its target sharding).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from acformer_jax import sharding as sharding_lib
from acformer_jax.conversion.io import CheckpointReader
from acformer_jax.conversion.keymaps import KeyMap, flatten_paths, unflatten_paths


def abstract_params(module: nn.Module, *init_args) -> Any:
  """``params`` of ``module.init`` as ShapeDtypeStructs (boxed with logical axes); no FLOPs."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *init_args))["params"]


def param_shardings(abstract_boxed: Any, mesh: Mesh, rules=sharding_lib.LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings of an abstract boxed param tree via the logical-axis table."""
  return sharding_lib.logical_to_sharding(nn.get_partition_spec(abstract_boxed), mesh, rules)


def load_params(reader: CheckpointReader, keymap: KeyMap, abstract: Any, *,
                shardings: Any = None, what: Optional[str] = None) -> dict:
  """Fills the (possibly boxed) abstract tree ``abstract`` from ``reader`` via ``keymap``.

  Every key is validated first (one :class:`ConversionError` listing all problems).
  Leaves are cast to the abstract leaf dtype (the module's ``param_dtype``).

  Args:
    reader: an open :class:`CheckpointReader`.
    keymap: the HF <-> ours map.
    abstract: ``abstract_params(...)`` output.
    shardings: ``None`` (host arrays put on the default device), a ``Mesh`` (shardings
      derived from the logical axes of ``abstract``), or a matching tree of ``Sharding``.
      With shardings every device shard is read directly from the file with
      ``jax.make_array_from_callback`` (lazy slices for safetensors).
    what: label for error messages (defaults to the directory).
  Returns:
    A nested dict of ``jax.Array`` matching ``nn.unbox(abstract)``.
  """
  if isinstance(shardings, Mesh):
    shardings = param_shardings(abstract, shardings)
  targets = flatten_paths(nn.unbox(abstract))
  file_shapes = {k: reader.shape(k) for k in reader.keys()}
  keymap.validate(file_shapes, {p: t.shape for p, t in targets.items()},
                  what=what or f"checkpoint {reader.directory}")
  if shardings is None:
    return unflatten_paths(_load_host(reader, keymap, targets))
  flat_sh = flatten_paths(shardings)
  by_path = keymap.by_path()
  out = {}
  for path, t in targets.items():
    out[path] = jax.make_array_from_callback(
        t.shape, flat_sh[path], _shard_reader(reader, by_path[path], t.dtype))
  return unflatten_paths(out)


def _load_host(reader: CheckpointReader, keymap: KeyMap, targets: Mapping[str, Any]) -> dict:
  by_hf = keymap.by_hf
  bufs = {p: np.empty(t.shape, t.dtype) for p, t in targets.items()}
  for key, arr in reader.items():
    e = by_hf.get(key)
    if e is None:
      continue  # validated as ignorable
    val = e.transform.forward(arr).astype(bufs[e.path].dtype)
    if e.row is None:
      bufs[e.path][...] = val
    else:
      bufs[e.path][e.row] = val
  return {p: jax.numpy.asarray(bufs.pop(p)) for p in list(bufs)}


def _shard_reader(reader: CheckpointReader, rows: Mapping, dtype):
  """Callback for ``make_array_from_callback``: reads only the requested block."""

  def read(entry, index):
    src = entry.transform.source_index(index)
    return entry.transform.forward(reader.read_slice(entry.hf, src)).astype(dtype)

  def callback(index):
    index = tuple(index)
    if None in rows:
      return read(rows[None], index)
    layer_ids = range(*index[0].indices(len(rows)))
    return np.stack([read(rows[r], index[1:]) for r in layer_ids])

  return callback

"""The one HF-to-sharded-params path: a :class:`~acformer_jax.conversion.sources.TensorSource`
and a key map in, ``jax.Array`` s placed in their target shardings out, tensor by tensor.

Spec: ``docs/jax_practices.md`` items 3 (abstract-first) and 7 (streaming, table-driven,
each tensor placed directly into its target sharding). Each parameter is built with
``jax.make_array_from_callback``: the callback runs for this process's devices only and
reads exactly the block each device holds (one stacked layer at a time), so under
``jax.distributed`` every process reads and holds only its share. ``convert``, the
trainer's ``hf_llama:`` / ``hf_clip:`` init and the analysis all load through here.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from acformer_jax import sharding as sharding_lib
from acformer_jax.params_store import abstract_params  # noqa: F401  (conversion's public name)
from acformer_jax.conversion.keymaps import KeyMap, flatten_paths, unflatten_paths
from acformer_jax.conversion.sources import TensorSource


def param_shardings(abstract_boxed: Any, mesh: Mesh, rules=sharding_lib.LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings of an abstract boxed param tree via the logical-axis table."""
  return sharding_lib.logical_to_sharding(nn.get_partition_spec(abstract_boxed), mesh, rules)


def _callback(source: TensorSource, rows: Mapping, shape, dtype):
  """Reads the block of one parameter a device asks for (``rows``: layer -> key map entry,
  ``None`` for an unstacked parameter)."""
  stacked = None not in rows

  def read(entry, index):
    arr = source.read_slice(entry.hf, entry.transform.source_index(tuple(index)))
    return entry.transform.forward(arr)

  def callback(index):
    index = tuple(index)
    if not stacked:
      return np.asarray(read(rows[None], index), dtype=dtype)
    layer_ids = range(*index[0].indices(shape[0]))
    inner = index[1:]
    block = np.empty((len(layer_ids),) + tuple(
        len(range(*s.indices(n))) for s, n in zip(inner, shape[1:])), dtype)
    for j, r in enumerate(layer_ids):
      block[j] = read(rows[r], inner)
    return block

  return callback


def stream(source: TensorSource, keymap: KeyMap, targets: Mapping[str, Any],
           progress: bool = False) -> Dict[str, jax.Array]:
  """Flat ``path -> jax.Array`` for every target (``ShapeDtypeStruct``; with a sharding
  each device reads its block, without one the array goes to the default device), cast to
  the target dtype. Keys are expected to be validated already."""
  by_path = keymap.by_path()
  it = list(targets)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(it, desc="convert", unit="param")
  out = {}
  for path in it:
    t = targets[path]
    read = _callback(source, by_path[path], t.shape, t.dtype)
    if t.sharding is None:  # host read, then the default device (uncommitted)
      out[path] = jax.numpy.asarray(read((slice(None),) * len(t.shape)))
    else:
      out[path] = jax.make_array_from_callback(t.shape, t.sharding, read)
    source.release()
  return out


def load_params(source: TensorSource, keymap: KeyMap, abstract: Any, *,
                shardings: Any = None, what: Optional[str] = None) -> dict:
  """Fills the (possibly boxed) abstract tree ``abstract`` from ``source`` via ``keymap``.

  Every key is validated first (one :class:`ConversionError` listing all problems).
  Leaves are cast to the abstract leaf dtype (the module's ``param_dtype``).

  Args:
    source: a :class:`TensorSource` (e.g. ``TensorSource().mount("", directory)``).
    keymap: the HF <-> ours map.
    abstract: ``abstract_params(...)`` output.
    shardings: ``None`` (host reads put on the default device), a ``Mesh`` (shardings derived from the
      logical axes of ``abstract``), or a matching tree of ``Sharding``.
    what: label for error messages (defaults to the mounted paths).
  Returns:
    A nested dict of ``jax.Array`` matching ``nn.unbox(abstract)``.
  """
  if isinstance(shardings, Mesh):
    shardings = param_shardings(abstract, shardings)
  flat = flatten_paths(nn.unbox(abstract))
  flat_sh = flatten_paths(shardings) if shardings is not None else {p: None for p in flat}
  keymap.validate({k: source.shape(k) for k in source.keys()},
                  {p: t.shape for p, t in flat.items()},
                  what=what or f"checkpoint {source.describe()}")
  targets = {p: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=flat_sh[p])
             for p, t in flat.items()}
  return unflatten_paths(stream(source, keymap, targets))

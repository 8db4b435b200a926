"""Declarative, invertible key maps between HF checkpoints and our parameter trees.

The generic machinery (no model knowledge): conversion, the LLM family registry and
the tower registries build their maps from it.

Spec: ``docs/jax_practices.md`` item 7, ``docs/method.md`` 2.9 (key names, conversion notes).

A map is declared as tables of :class:`Rule` (HF key pattern -> our path + transform);
per-layer rules use ``{i}`` for the HF layer index and are expanded into
:class:`LayerStack` s, i.e. HF layers ``start .. start+count-1`` become rows ``0..count-1``
of the stacked leaf under ``path``. The expansion is a :class:`KeyMap`: a flat tuple of
concrete :class:`Entry` (hf key, our path, stack row, transform). Every transform has an
inverse, so the same map also exports (``KeyMap.export``). Maps compose with ``+`` and
re-root with ``with_prefix`` / ``rename_hf`` (e.g. to nest the towers inside an MLLM).
Paths are ``/``-joined param paths without the ``params`` collection.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

Shape = Tuple[int, ...]


class ConversionError(ValueError):
  """A checkpoint does not match the expected key map (lists every offending key)."""


@dataclasses.dataclass(frozen=True)
class Permute:
  """An axis permutation ``ours = transpose(hf, axes)`` (``axes=None``: identity).

  Forward/inverse map arrays, shapes and (for sharded loading) index tuples.
  """
  axes: Optional[Tuple[int, ...]] = None
  name: str = "identity"

  def _inv_axes(self):
    return tuple(int(a) for a in np.argsort(self.axes))

  def forward(self, x: np.ndarray) -> np.ndarray:
    return x if self.axes is None else np.transpose(x, self.axes)

  def inverse(self, x: np.ndarray) -> np.ndarray:
    return x if self.axes is None else np.transpose(x, self._inv_axes())

  def inverse_shape(self, ours: Shape) -> Shape:
    """HF shape that yields ``ours``."""
    return tuple(ours) if self.axes is None else tuple(ours[i] for i in self._inv_axes())

  def source_index(self, ours: Tuple[slice, ...]) -> Tuple[slice, ...]:
    """HF index reading exactly the part that becomes ``ours`` after ``forward``."""
    if self.axes is None:
      return tuple(ours)
    return tuple(ours[i] for i in self._inv_axes())


IDENTITY = Permute()
LINEAR = Permute((1, 0), "linear")                # torch Linear [out, in] -> kernel [in, out]
CONV2D = Permute((2, 3, 1, 0), "conv2d")          # torch Conv2d [O, I, kh, kw] -> [kh, kw, I, O]


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str                     # HF key; per-layer rules contain "{i}"
  ours: str                   # our path ("a/b/kernel"); relative to the stack for per-layer rules
  transform: Permute = IDENTITY


@dataclasses.dataclass(frozen=True)
class LayerStack:
  path: str    # our stacked subtree, e.g. "layers"
  start: int   # first HF layer index
  count: int


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str
  path: str
  row: Optional[int]          # stack row for stacked leaves, None otherwise
  transform: Permute


def _join(prefix: str, path: str) -> str:
  return f"{prefix.rstrip('/')}/{path}" if prefix else path


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """A concrete map; ``ignore`` holds full-match regexes of HF keys that may be present
  in a file but are not loaded (buffers, the other CLIP tower, a tied head...)."""
  entries: Tuple[Entry, ...]
  ignore: Tuple[str, ...] = ()

  @classmethod
  def build(cls, rules: Sequence[Rule], layer_rules: Sequence[Rule] = (),
            stacks: Sequence[LayerStack] = (), ignore: Sequence[str] = ()) -> "KeyMap":
    entries = [Entry(r.hf, r.ours, None, r.transform) for r in rules]
    for s in stacks:
      for row in range(s.count):
        entries += [Entry(r.hf.format(i=s.start + row), _join(s.path, r.ours), row, r.transform)
                    for r in layer_rules]
    return cls(tuple(entries), tuple(ignore))

  def __add__(self, other: "KeyMap") -> "KeyMap":
    return KeyMap(self.entries + other.entries, self.ignore + other.ignore)

  def rename_hf(self, fn: Callable[[str], str]) -> "KeyMap":
    """Applies ``fn`` to every HF key (ignore patterns are kept as they are)."""
    return KeyMap(tuple(dataclasses.replace(e, hf=fn(e.hf)) for e in self.entries), self.ignore)

  def with_prefix(self, hf_prefix: str = "", our_prefix: str = "") -> "KeyMap":
    """Nests the map: HF keys gain ``hf_prefix``, our paths gain ``our_prefix/``."""
    entries = tuple(dataclasses.replace(e, hf=hf_prefix + e.hf, path=_join(our_prefix, e.path))
                    for e in self.entries)
    ignore = tuple(f"{re.escape(hf_prefix)}(?:{p})" for p in self.ignore)
    return KeyMap(entries, ignore)

  @property
  def by_hf(self) -> Dict[str, Entry]:
    return {e.hf: e for e in self.entries}

  def by_path(self) -> Dict[str, Dict[Optional[int], Entry]]:
    out: Dict[str, Dict[Optional[int], Entry]] = {}
    for e in self.entries:
      out.setdefault(e.path, {})[e.row] = e
    return out

  def is_ignored(self, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in self.ignore)

  def validate(self, file_shapes: Mapping[str, Shape], targets: Mapping[str, Shape],
               what: str = "checkpoint") -> None:
    """Raises one :class:`ConversionError` listing every missing, unexpected and
    mis-shaped key (plus any parameter that no rule fills)."""
    problems = []
    by_hf = self.by_hf
    missing = sorted(k for k in by_hf if k not in file_shapes)
    unexpected = sorted(k for k in file_shapes if k not in by_hf and not self.is_ignored(k))
    misshaped = []
    for k, e in sorted(by_hf.items()):
      if k not in file_shapes or e.path not in targets:
        continue
      ours = tuple(targets[e.path])[1:] if e.row is not None else tuple(targets[e.path])
      want = e.transform.inverse_shape(ours)
      if tuple(file_shapes[k]) != want:
        misshaped.append(f"{k}: file {tuple(file_shapes[k])}, expected {want}")
    if missing:
      problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
      problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    problems += self._coverage_problems(targets)
    if problems:
      raise ConversionError(f"{what} does not match the expected layout:\n  " + "\n  ".join(problems))

  def _coverage_problems(self, targets: Mapping[str, Shape]) -> list:
    by_path, out = self.by_path(), []
    unknown = sorted(p for p in by_path if p not in targets)
    if unknown:
      out.append(f"key map names parameters the model does not have: {unknown}")
    unfilled = []
    for p, shape in sorted(targets.items()):
      rows = by_path.get(p, {})
      want = {None} if None in rows or not rows else set(range(shape[0]))
      if not rows or set(rows) != want:
        unfilled.append(p)
    if unfilled:
      out.append(f"parameters no key fills completely: {unfilled}")
    return out

  def export(self, flat_params: Mapping[str, np.ndarray]) -> Iterator[Tuple[str, np.ndarray]]:
    """Reverse direction: yields ``(hf_key, array)`` from our flat ``path -> array`` dict."""
    for e in self.entries:
      leaf = flat_params[e.path]
      yield e.hf, e.transform.inverse(np.asarray(leaf if e.row is None else leaf[e.row]))


def flatten_paths(tree: Mapping, prefix: str = "") -> Dict[str, object]:
  """Nested dict -> ``{"a/b/c": leaf}``."""
  out = {}
  for k, v in tree.items():
    p = _join(prefix, str(k))
    if isinstance(v, Mapping):
      out.update(flatten_paths(v, p))
    else:
      out[p] = v
  return out


def unflatten_paths(flat: Mapping[str, object]) -> dict:
  out: dict = {}
  for p, v in flat.items():
    node = out
    *parents, last = p.split("/")
    for k in parents:
      node = node.setdefault(k, {})
    node[last] = v
  return out

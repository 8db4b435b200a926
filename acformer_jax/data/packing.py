"""Multimodal sequence packing: samples -> fixed-shape rows of several samples each.

Spec: issue #13 and ``acformer_jax/batch.py`` (the batch format). A sample is one processed
record (``input_ids`` with its image slots already expanded to the connector's ``Nv`` tokens,
``labels``, ``image`` or None); its cost is its true LLM length ``len(input_ids)`` plus one
image slot if it has an image (text-only samples take none).

Algorithm (:func:`pack_batch`, deterministic): the batch's ``B`` rows start empty. Samples
are taken in order -- first the ones carried over from the previous batch, then new ones --
and each goes to the *first* row with room for its tokens (``<= max_length`` in all) and,
with an image, a free image slot (``<= max_images`` per row). A sample that fits no row is
carried over to the next batch. The batch is complete when every row is closed (full, or
holding one sample when packing is off) or when ``lookahead`` samples are waiting, so the
carried-over buffer never holds more than ``lookahead`` samples. Carried samples come first
in the next batch, whose rows are empty, so the oldest ``B`` of them always find a row: no
sample waits more than ``ceil(lookahead / B) + 1`` batches.

With ``one_per_row`` (``data.packing=False``) each row takes one sample, in order: the
classic padded batch, in the same format with ``M = 1``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from acformer_jax import batch as batch_lib
from acformer_jax.data.templates import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class PackSpec:
  """Row capacity: ``max_length`` tokens, ``max_images`` image slots, ``lookahead`` samples."""
  max_length: int
  max_images: int = 1
  lookahead: int = 64
  one_per_row: bool = False

  def __post_init__(self):
    if self.max_images < 1:
      raise ValueError(f"data.max_images_per_row must be >= 1, got {self.max_images}")
    if self.lookahead < 0:
      raise ValueError(f"data.packing_lookahead must be >= 0, got {self.lookahead}")


def sample_cost(sample: Mapping[str, Any]) -> Tuple[int, int]:
  """``(tokens, images)`` a sample needs in a row."""
  return len(sample["input_ids"]), int(sample.get("image") is not None)


class Row:
  """One row being filled: its samples and the room left."""

  def __init__(self, spec: PackSpec):
    self.spec, self.samples, self.tokens, self.images = spec, [], 0, 0

  def fits(self, sample) -> bool:
    n, k = sample_cost(sample)
    if self.spec.one_per_row:
      return not self.samples
    return self.tokens + n <= self.spec.max_length and self.images + k <= self.spec.max_images

  def add(self, sample) -> None:
    n, k = sample_cost(sample)
    self.samples.append(sample)
    self.tokens += n
    self.images += k

  @property
  def closed(self) -> bool:
    if self.spec.one_per_row:
      return bool(self.samples)
    return self.tokens >= self.spec.max_length


def pack_batch(carried: Sequence[Any], stream: Iterator[Any], rows: int, spec: PackSpec,
               sample_of: Callable[[Any], Mapping[str, Any]] = lambda x: x):
  """Packs one batch of ``rows`` rows (see the module docstring).

  Args:
    carried: items waiting from the previous batch (oldest first).
    stream: new items; read only as far as needed.
    rows: ``B``.
    spec: the row capacity and look-ahead.
    sample_of: item -> sample dict (items may wrap samples with bookkeeping).

  Returns:
    ``(rows, leftover, exhausted)``: the items of each row in order, the items carried to the
    next batch (oldest first, at most ``max(lookahead, len(carried))``) and whether ``stream``
    ran dry.
  """
  packed = [Row(spec) for _ in range(rows)]
  items: List[List[Any]] = [[] for _ in range(rows)]
  leftover: List[Any] = []

  def place(item) -> None:
    sample = sample_of(item)
    n, k = sample_cost(sample)
    if n > spec.max_length or k > spec.max_images:
      raise ValueError(f"a sample of {n} tokens and {k} image(s) cannot fit a row of "
                       f"{spec.max_length} tokens and {spec.max_images} image slot(s)")
    for r, row in enumerate(packed):
      if row.fits(sample):
        row.add(sample)
        items[r].append(item)
        return
    leftover.append(item)

  def done() -> bool:
    return all(r.closed for r in packed) or (not spec.one_per_row and len(leftover) >= max(spec.lookahead, 1))

  for item in carried:
    place(item)
  exhausted = False
  while not done():
    try:
      item = next(stream)
    except StopIteration:
      exhausted = True
      break
    place(item)
  return items, leftover, exhausted


def collate(rows: Sequence[Sequence[Mapping[str, Any]]], shape: batch_lib.BatchShape, pad_id: int,
            indices: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, np.ndarray]:
  """Rows of samples -> a host batch in the ``acformer_jax.batch`` format.

  Segment ``s`` (1-based) of row ``b`` is ``rows[b][s-1]``: its tokens follow the previous
  segment's, its positions restart at 0, its first label is -100 (the shifted loss never
  crosses samples) and its image (if any) takes the next image slot of the row. Rows past
  ``len(rows)`` and the tail of every row are padding (segment 0, labels -100, id ``pad_id``).
  ``indices`` (record index per sample) adds ``sample_index`` int64 ``[B, T]``: the record of
  each token, -1 on padding.
  """
  if len(rows) > shape.rows:
    raise ValueError(f"{len(rows)} rows for a batch of {shape.rows}")
  out = batch_lib.empty(shape)
  out["input_ids"].fill(pad_id)
  if indices is not None:
    out["sample_index"] = np.full((shape.rows, shape.length), -1, np.int64)
  for b, row in enumerate(rows):
    t = m = 0
    for s, sample in enumerate(row):
      n = len(sample["input_ids"])
      if t + n > shape.length:
        raise ValueError(f"row {b} holds {t + n} tokens, more than data.max_length={shape.length}")
      out["input_ids"][b, t:t + n] = sample["input_ids"]
      out["labels"][b, t:t + n] = sample["labels"]
      out["labels"][b, t] = IGNORE_INDEX
      out["segment_ids"][b, t:t + n] = s + 1
      out["positions"][b, t:t + n] = np.arange(n, dtype=np.int32)
      if indices is not None:
        out["sample_index"][b, t:t + n] = indices[b][s]
      if sample.get("image") is not None:
        if m >= shape.images_per_row:
          raise ValueError(f"row {b} holds more than data.max_images_per_row={shape.images_per_row} images")
        out["images"][b, m] = sample["image"]
        out["image_mask"][b, m] = True
        m += 1
      t += n
  return out


def efficiency(batch: Mapping[str, np.ndarray]) -> Dict[str, int]:
  """Real tokens / token slots and real images / image slots of one host batch."""
  return {"tokens": batch_lib.real_tokens(batch), "token_slots": int(batch["segment_ids"].size),
          "images": batch_lib.real_images(batch), "image_slots": int(batch["image_mask"].size)}

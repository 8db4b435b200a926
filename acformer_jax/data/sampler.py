"""Epoch orders and per-host shards (deterministic from a seed).

Spec: ``docs/method.md`` 2.2 (``group_by_modality_length``) and ``docs/design.md`` "Batches".

An epoch's *global order* is a permutation of the record indices: a plain shuffle, or LLaVA's
modality/length grouping. It is cut into consecutive global batches of ``global_batch`` indices;
host ``p`` of ``P`` owns slot ``[p * B, (p + 1) * B)`` of every global batch (``B = global/P``) and
the tail that does not fill a global batch is dealt round-robin. Shards are therefore disjoint
and together cover the epoch, and with length grouping every global step is one megabatch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), int(epoch), 0x5EED])


def _length_grouped(indices: np.ndarray, lengths: np.ndarray, megabatch: int, rng) -> list:
  """Shuffle, cut into megabatches, sort each by length (longest first)."""
  perm = indices[rng.permutation(len(indices))]
  return [sorted(perm[i:i + megabatch].tolist(), key=lambda j: -abs(int(lengths[j])))
          for i in range(0, len(perm), megabatch)]


def modality_length_grouped_order(lengths: Sequence[int], megabatch: int, rng) -> np.ndarray:
  """LLaVA's ``group_by_modality_length`` semantics (docs/method.md 2.2).

  ``lengths`` are signed word counts: positive for samples with an image, negative for text-only.
  Each modality is length-grouped into megabatches of ``megabatch`` indices; the full megabatches
  of both are shuffled together and the two leftover partial ones are merged into a final batch.
  """
  lengths = np.asarray(lengths)
  mm = np.flatnonzero(lengths > 0)
  lang = np.flatnonzero(lengths <= 0)
  if len(mm) == 0 or len(lang) == 0:
    groups = _length_grouped(np.arange(len(lengths)), lengths, megabatch, rng)
    return np.asarray([i for g in groups for i in g], np.int64)
  mm_groups = _length_grouped(mm, lengths, megabatch, rng)
  lang_groups = _length_grouped(lang, lengths, megabatch, rng)
  tail = [g for g in (mm_groups[-1], lang_groups[-1]) if len(g) < megabatch]
  full = [g for g in mm_groups + lang_groups if len(g) == megabatch]
  order = [full[i] for i in rng.permutation(len(full))]
  extra = sorted(i for g in tail for i in g)
  order = [i for g in order for i in g] + extra
  return np.asarray(order, np.int64)


def epoch_order(num_records: int, epoch: int, seed: int, *, shuffle: bool = True,
                lengths: Optional[Sequence[int]] = None, global_batch: int = 1) -> np.ndarray:
  """The global visiting order of one epoch (same on every host)."""
  rng = epoch_rng(seed, epoch)
  if lengths is not None:
    if len(lengths) != num_records:
      raise ValueError(f"lengths has {len(lengths)} entries for {num_records} records")
    return modality_length_grouped_order(lengths, global_batch, rng)
  if not shuffle:
    return np.arange(num_records, dtype=np.int64)
  return rng.permutation(num_records).astype(np.int64)


def host_shard(order: np.ndarray, global_batch: int, process_index: int, process_count: int) -> np.ndarray:
  """This host's indices of ``order``, in visiting order (see module docstring)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by process_count {process_count}")
  local = global_batch // process_count
  full = (len(order) // global_batch) * global_batch
  body = order[:full].reshape(-1, global_batch)[:, process_index * local:(process_index + 1) * local]
  return np.concatenate([body.reshape(-1), order[full:][process_index::process_count]])


def packing_groups(global_batch: int, process_count: int, groups: Optional[int] = None, *,
                   packing: bool = True) -> int:
  """The number ``G`` of packing groups of a global batch (docs/data.md 5.1).

  Group ``g`` of ``G`` packs sub-stream :func:`host_shard` ``(order, global_batch, g, G)`` into
  ``global_batch / G`` rows per step with its own packer; host ``p`` owns groups
  ``[p G / P, (p + 1) G / P)``. The global batch is then the same for every process count that
  divides ``G``. Unpacked runs use one group per host (the classic per-host shard). ``groups``
  None with packing: ``gcd(global_batch, 8)`` when the process count divides it, else one group
  per row.

  Raises:
    ValueError: naming ``data.packing_groups`` when ``G`` does not divide the global batch or is
      not a multiple of the process count.
  """
  if not packing:
    return int(process_count)
  if groups is None:
    groups = int(np.gcd(int(global_batch), 8))
    if groups % process_count:
      groups = int(global_batch)
  groups = int(groups)
  if groups < 1 or global_batch % groups:
    raise ValueError(f"data.packing_groups={groups} must be >= 1 and divide the global batch "
                     f"(train.global_batch_size={global_batch})")
  if groups % process_count:
    raise ValueError(f"data.packing_groups={groups} must be a multiple of the process count "
                     f"({process_count}): every host packs whole groups")
  return groups

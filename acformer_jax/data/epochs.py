"""How many train steps an epoch is: the one place that turns a dataset size into steps.

The pipeline chains epochs without a break (the tail of epoch ``e`` shares a batch with the
head of epoch ``e + 1``) and drops the last partial batch, so ``E`` epochs are
``floor(E * rows_per_epoch / global_batch)`` steps. Unpacked, a row is one sample; a packer
(``packer(num_samples) -> rows``) that fills rows with several samples plugs in here.
"""
from __future__ import annotations

import fractions
from typing import Callable, Optional

Packer = Callable[[int], int]


def rows_per_epoch(num_samples: int, packer: Optional[Packer] = None) -> int:
  """Batch rows one pass over ``num_samples`` samples fills."""
  rows = int(num_samples if packer is None else packer(int(num_samples)))
  if rows < 1:
    raise ValueError(f"an epoch of {num_samples} samples fills {rows} rows; the dataset is empty")
  return rows


def batches_per_epoch(num_samples: int, global_batch: int,
                      packer: Optional[Packer] = None) -> fractions.Fraction:
  """Global batches per epoch (exact, possibly fractional: epochs chain)."""
  if global_batch < 1:
    raise ValueError(f"global batch {global_batch} must be >= 1")
  return fractions.Fraction(rows_per_epoch(num_samples, packer), int(global_batch))


def steps_for_epochs(epochs: int, num_samples: int, global_batch: int,
                     packer: Optional[Packer] = None) -> int:
  """Train steps of ``epochs`` passes (``floor``: the last partial batch is dropped)."""
  steps = int(epochs * batches_per_epoch(num_samples, global_batch, packer))
  if steps < 1:
    raise ValueError(f"train.epochs={epochs} over {num_samples} samples is less than one global "
                     f"batch of {global_batch}; lower train.global_batch_size or add data")
  return steps

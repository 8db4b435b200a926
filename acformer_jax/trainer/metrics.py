"""Training metrics: TensorBoard (tensorboardX), a JSONL log and console lines, host 0 only.

Spec: ``docs/jax_practices.md`` item 10 (tokens/s and MFU logged every N steps). Scalars written:
``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/token_accuracy``,
``perf/tokens_per_s``, ``perf/step_time_s``, ``perf/mfu``, ``perf/tflops_per_s``,
``data/skipped_total`` and ``data/skipped/<reason>``, ``data/truncated``, and the packing
efficiency of ``DataIterator.stats()``: ``data/token_efficiency`` / ``data/image_efficiency``
(real tokens / token slots, real images / image slots since the start) and their
``data/last_*`` values for the last batch, ``data/last_samples_per_row``.
"""
from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

logger = logging.getLogger("acformer_jax.trainer.metrics")


class MetricsWriter:
  """Writes scalars to ``<workdir>/tb`` and ``<workdir>/metrics.jsonl`` on process 0."""

  def __init__(self, workdir, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = self._jsonl = None
    if self.enabled:
      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(logdir=str(workdir / "tb"))
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, global_step=step)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, global_step=step)

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def data_scalars(stats: Mapping[str, Any]) -> Dict[str, float]:
  """Skip/truncation counters and packing efficiency of ``DataIterator.stats()`` as scalars."""
  out = {"data/skipped_total": float(stats.get("skipped_total", 0)),
         "data/truncated": float(stats.get("truncated", 0))}
  for k in ("token_efficiency", "image_efficiency", "last_token_efficiency",
            "last_image_efficiency", "last_samples_per_row"):
    if k in stats:
      out[f"data/{k}"] = float(stats[k])
  for reason, n in sorted((stats.get("skipped") or {}).items()):
    out[f"data/skipped/{reason}"] = float(n)
  return out


class Throughput:
  """Wall-clock rates between two log points: step time, tokens/s, achieved FLOP/s, MFU."""

  def __init__(self, flops_per_step: float, peak_flops: float):
    self.flops_per_step, self.peak = flops_per_step, peak_flops
    self._t, self._steps, self._tokens = time.perf_counter(), 0, 0.0

  def add(self, tokens: float) -> None:
    self._steps += 1
    self._tokens += float(tokens)

  def reset(self) -> None:
    self._t, self._steps, self._tokens = time.perf_counter(), 0, 0.0

  def scalars(self) -> Dict[str, float]:
    dt = max(time.perf_counter() - self._t, 1e-9)
    if not self._steps:
      return {}
    achieved = self.flops_per_step * self._steps / dt
    out = {"perf/step_time_s": dt / self._steps, "perf/tokens_per_s": self._tokens / dt,
           "perf/tflops_per_s": achieved / 1e12}
    if self.peak > 0:
      out["perf/mfu"] = achieved / self.peak
    self.reset()
    return out

"""Model FLOPs per step (``trainer/flops.py``) and their cross-check against XLA.

Two analytic numbers per step:

* **model FLOPs**: ``trainer.flops.train_step_flops`` (causal attention counted at half;
  used for MFU and the FLOP-ideal speedup);
* **executed matmul FLOPs**: the same plus the masked half of causal attention, because the
  decoder computes the dense ``T x T`` score matrix. This is what XLA's ``cost_analysis()``
  counts for the dots and convolutions, so it is the number to cross-check.

XLA counts a ``lax.scan`` body once (``aot_tpu.md``, cost_analysis caveats), so the check
compiles the step with ``scan_layers=False`` (same parameters, unrolled layers). XLA's total
also includes elementwise ops (norms, softmax, activations, the optimizer), which the
analytic count ignores; on models whose widths are >= 128 they are a few percent.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

from acformer_jax import config as config_lib
from acformer_jax.trainer import flops as flops_lib


def llm_is_trainable(trainable) -> bool:
  return any(str(p).startswith("llm") for p in trainable)


def model_flops(mc: config_lib.ModelConfig, batch: int, seq_len: int, *,
                llm_trainable: bool) -> flops_lib.StepFlops:
  return flops_lib.train_step_flops(mc, batch, seq_len, llm_trainable=llm_trainable)


def executed_flops(mc: config_lib.ModelConfig, batch: int, seq_len: int, *,
                   llm_trainable: bool) -> float:
  """Model FLOPs plus the masked half of the decoder's causal attention (fwd + 2 bwd)."""
  total = model_flops(mc, batch, seq_len, llm_trainable=llm_trainable).total
  _, attention = flops_lib.llm_forward_flops(mc.llm, seq_len)
  return total + 3.0 * batch * attention


def xla_flops(compiled) -> Optional[float]:
  """``flops`` of a compiled executable's ``cost_analysis()`` (dict or list of dicts)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def cross_check(mc: config_lib.ModelConfig, train_cfg, batch_np, compiled=None) -> Dict[str, float]:
  """XLA's FLOPs of the unrolled step vs :func:`executed_flops`.

  ``compiled``: the step already compiled for ``mc``; reused when ``mc`` is unrolled,
  otherwise the unrolled step is compiled here on abstract inputs.
  """
  from acformer_jax.benchmarking import workload  # pylint: disable=import-outside-toplevel
  if compiled is None or mc.scan_layers:
    unrolled = dataclasses.replace(mc, scan_layers=False)
    compiled = workload.lower_abstract(unrolled, train_cfg, batch_np).compile()
  b, t = batch_np["input_ids"].shape
  ours = executed_flops(mc, b, t, llm_trainable=llm_is_trainable(train_cfg.trainable))
  xla = xla_flops(compiled)
  return {"xla_flops": xla, "executed_flops": ours,
          "rel_diff": None if not xla else (xla - ours) / ours}

"""Model FLOPs per step (``trainer/flops.py``) and their cross-check against XLA.

Two analytic numbers per step:

* **model FLOPs**: ``trainer.flops`` (causal attention counted at half; real tokens and
  images for MFU and the FLOP-ideal speedup, padded slots reported separately);
* **executed matmul FLOPs**: the same plus the masked half of causal attention, because the
  decoder computes the dense ``T x T`` score matrix. This is what XLA's ``cost_analysis()``
  counts for the dots and convolutions, so it is the number to cross-check.

XLA counts a ``lax.scan`` body once (``docs/aot_tpu.md``, cost_analysis caveats), so the check
compiles the step with ``scan_layers=False`` (same parameters, unrolled layers). XLA's total
also includes elementwise ops (norms, softmax, activations, the optimizer), which the
analytic count ignores; on models whose widths are >= 128 they are a few percent.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

from acformer_jax import config as config_lib
from acformer_jax.trainer import flops as flops_lib


def model_flops(mc: config_lib.ModelConfig, batch: int, seq_len: int, *, llm_trainable: bool,
                head_positions: int = 0) -> flops_lib.StepFlops:
  """Model FLOPs of ``batch`` full rows of ``seq_len`` tokens (the LM head on
  ``head_positions`` per row when > 0, as ``train.loss_positions``)."""
  return flops_lib.train_step_flops(mc, batch, seq_len, llm_trainable=llm_trainable,
                                    head_positions=head_positions)


def executed_flops(ex) -> float:
  """An experiment's padded FLOPs plus the masked half of the decoder's causal attention
  (fwd + 2 bwd) over every row: what the dense score matrix makes the hardware do."""
  b, t = ex.batch_shape.rows, ex.batch_shape.length
  _, attention = flops_lib.llm_forward_flops(ex.mc.llm, t)
  return ex.padded_flops.total + 3.0 * b * attention


def xla_flops(compiled) -> Optional[float]:
  """``flops`` of a compiled executable's ``cost_analysis()`` (dict or list of dicts)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def cross_check(ex, compiled=None) -> Dict[str, float]:
  """XLA's FLOPs of the unrolled step vs :func:`executed_flops` of experiment ``ex``.

  ``compiled``: ``ex``'s step already compiled; reused when its layers are unrolled,
  otherwise the unrolled step is built (same builder) and compiled on abstract inputs.
  """
  from acformer_jax.benchmarking import workload  # pylint: disable=import-outside-toplevel
  if compiled is None or ex.mc.scan_layers:
    unrolled = copy.deepcopy(ex.config)
    unrolled.model.scan_layers = False
    compiled = workload.build(unrolled).lower().compile()
  ours = executed_flops(ex)
  xla = xla_flops(compiled)
  return {"xla_flops": xla, "executed_flops": ours,
          "rel_diff": None if not xla else (xla - ours) / ours}

"""Analytic training FLOPs per step and peak FLOP/s per device, for MFU.

Spec: ``jax_practices.md`` item 10 (explicit formula: matmul FLOPs of the trained tokens,
causal-halved attention, ViT FLOPs of the images, the connector; per-chip peak table).

Counting rules (model FLOPs, so rematerialisation is not counted; elementwise ops, norms,
softmax and embedding lookups are ignored):

* A matmul ``[m, k] x [k, n]`` costs ``2mkn`` forward. Its backward costs ``2mkn`` for the
  gradient w.r.t. its input (needed whenever anything upstream is trained) plus ``2mkn`` for
  the weight gradient (only if the weight trains). Hence the usual ``6N`` per token for a
  trained layer, ``4N`` for a frozen layer that gradients must cross, and ``2N`` for a frozen
  layer nothing upstream of which trains.
* ViT (frozen, output under ``stop_gradient``): forward only, and only the
  ``num_computed_layers`` blocks that run: per image ``2 N P^2 C D`` (patches) plus per block
  ``2 S (4 D^2 + 2 D F) + 4 S^2 D`` with ``S = N + 1`` tokens (full attention).
* Connector (always trained): resampler blocks (``Q`` queries, ``M = N + 1`` media tokens,
  inner width ``h * d``) ``2 Q Dv hd + 4 M Dv hd + 4 Q M hd + 2 Q hd Dv + 4 Q Dv F``, then
  the projector on ``Nv`` tokens. All of it at 3x forward, except a projector that reads the
  frozen ViT features directly (``linear``/``mlp2x_gelu``/``pooling``/``top_p``/``evit``):
  its first matmul needs no input gradient (2x).
* LLM on the padded sequence ``T``: per token ``2 (D H hd + 2 D K hd + H hd D + 3 D F)`` per
  layer plus ``2 D V`` for the head (on ``train.loss_positions`` rows per sequence when set);
  causal attention ``2 T^2 H hd`` per layer per sequence
  (``QK^T`` and ``AV`` at ``2 T^2 H hd`` each, halved for the mask). Trained LLM: 3x forward.
  Frozen LLM (stage 1): weight matmuls 2x (input gradients only, to reach the visual
  tokens), attention 3x (it has no weights: its backward is two input gradients).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax.models import connectors
from acformer_jax.models.towers import tower

logger = logging.getLogger("acformer_jax.trainer.flops")



@dataclasses.dataclass(frozen=True)
class StepFlops:
  vit: float
  connector: float
  llm: float

  @property
  def total(self) -> float:
    return self.vit + self.connector + self.llm


def vit_forward_flops(v: config_lib.VisionConfig) -> float:
  """Forward FLOPs of the frozen ViT for one image (what runs; the tower registry's
  ``flops``, ``models/towers.py``)."""
  return tower(v.tower).flops(v)


def connector_train_flops(mc: config_lib.ModelConfig) -> float:
  """Forward + backward FLOPs of the (trained) connector for one image (the connector
  registry's ``train_flops``, ``models/connectors.py``)."""
  return connectors.connector(mc.connector.type).train_flops(mc)


def llm_forward_flops(l: config_lib.LLMConfig, seq_len: int, head_positions: int = 0) -> tuple:
  """``(weight-matmul FLOPs, attention FLOPs)`` of one forward pass over ``seq_len`` tokens
  (the LM head on ``head_positions`` of them when > 0, see ``trainer/loss.py``)."""
  d, h, k, hd, f = l.hidden_size, l.num_heads, l.num_kv_heads, l.resolved_head_dim, l.intermediate_size
  per_token_layer = 2.0 * (d * h * hd + 2 * d * k * hd + h * hd * d + 3 * d * f)
  head_rows = min(head_positions, seq_len) if head_positions > 0 else seq_len
  weights = seq_len * l.num_layers * per_token_layer + head_rows * 2.0 * d * l.vocab_size
  attention = l.num_layers * 2.0 * seq_len * seq_len * h * hd
  return weights, attention


def train_step_flops(mc: config_lib.ModelConfig, global_batch: int, seq_len: int, *,
                     llm_trainable: bool, head_positions: int = 0) -> StepFlops:
  """Model FLOPs of one optimizer step on ``global_batch`` rows of ``seq_len`` tokens."""
  w, a = llm_forward_flops(mc.llm, seq_len, head_positions)
  llm = (3.0 if llm_trainable else 2.0) * w + 3.0 * a
  return StepFlops(vit=global_batch * vit_forward_flops(mc.vision),
                   connector=global_batch * connector_train_flops(mc),
                   llm=global_batch * llm)


# Dense bf16 peak FLOP/s per chip (vendor numbers), matched against ``device_kind``.
PEAK_FLOPS = (
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12),
    ("TPU v2", 45e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("V100", 125e12),
)


def table_peak_flops(device_kind: str) -> Optional[float]:
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def measure_matmul_flops(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
  """Measured FLOP/s of an ``n^3`` matmul on the default device (best of ``repeats``)."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def peak_flops_total(override_per_device: float = 0.0) -> tuple:
  """``(peak FLOP/s of all devices together, source)`` for the MFU denominator.

  ``override_per_device > 0`` wins; accelerators use :data:`PEAK_FLOPS`; CPU (simulated
  devices share the host's cores) uses one measured host matmul rate for the whole host.
  """
  n = jax.device_count()
  if override_per_device > 0:
    return override_per_device * n, "config"
  kind = jax.devices()[0].device_kind
  peak = table_peak_flops(kind)
  if peak is not None:
    return peak * n, f"table:{kind}"
  measured = measure_matmul_flops() * jax.process_count()
  logger.info("no peak FLOP/s for device kind %r; measured %.1f GFLOP/s per host", kind, measured / 1e9)
  return measured, f"measured:{kind}"

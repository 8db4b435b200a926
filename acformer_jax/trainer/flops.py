"""Analytic training FLOPs per step and peak FLOP/s per device, for MFU.

Spec: ``docs/jax_practices.md`` item 10 (explicit formula: matmul FLOPs of the trained tokens,
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
* LLM: by its family's ``flops`` (``models/registry.py``); the shared decoder's
  (``models/families/decoder_hf.py``): per token ``2 (D H hd + 2 D K hd + H hd D + 3 D F)`` per
  layer plus ``2 D V`` for the head (on ``train.loss_positions`` rows per sequence when set);
  causal attention ``2 L^2 H hd`` per layer per sample of ``L`` tokens (``QK^T`` and ``AV`` at
  ``2 L^2 H hd`` each, halved for the mask; a sliding window ``W < L`` drops the
  ``(L - W)^2 / 2`` pairs beyond it in the padded count). Trained LLM: 3x forward.
  Frozen LLM (stage 1): weight matmuls 2x (input gradients only, to reach the visual
  tokens), attention 3x (it has no weights: its backward is two input gradients).

Two counts per step: **real** (:func:`real_step_flops`: real tokens, real images, and
attention within each packed sample; MFU uses it) and **padded**
(:func:`train_step_flops`: every token slot and image slot of every row, one sequence per
row), reported separately.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax.models import registry
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


def llm_coefficients(l: config_lib.LLMConfig) -> tuple:
  """Forward FLOPs ``(per token in the layers, per token of the LM head, per query-key pair
  of a segment's full ``L x L`` score matrix)``, read off the family's formula (causal
  attention costs half the pairs; a sliding window is not applied per sample)."""
  fam = registry.family(l.family)
  one, _ = fam.flops(l, 1, 0)        # per_token + head
  two, _ = fam.flops(l, 2, 1)        # 2 per_token + head
  _, attn = fam.flops(l, 2, 0)       # pair * 2^2 (no window is shorter than 2)
  per_token = two - one
  return per_token, one - per_token, attn / 4.0


def llm_forward_flops(l: config_lib.LLMConfig, seq_len: int, head_positions: int = 0) -> tuple:
  """``(weight-matmul FLOPs, attention FLOPs)`` of one forward pass over ``seq_len`` tokens
  (the LM head on ``head_positions`` of them when > 0, see ``trainer/loss.py``): the
  formula of the config's LLM family (``models/registry.py``)."""
  return registry.family(l.family).flops(l, seq_len, head_positions)


def _llm_train(weights: float, attention: float, llm_trainable: bool) -> float:
  return (3.0 if llm_trainable else 2.0) * weights + 3.0 * attention


def train_step_flops(mc: config_lib.ModelConfig, global_batch: int, seq_len: int, *,
                     llm_trainable: bool, head_positions: int = 0,
                     images_per_row: int = 1) -> StepFlops:
  """PADDED FLOPs of one optimizer step: ``global_batch`` rows of ``seq_len`` tokens, each
  row one sequence, every one of its ``images_per_row`` image slots encoded. This is what
  static shapes make the hardware do; :func:`real_step_flops` is the model FLOPs of the
  work that counts."""
  w, a = llm_forward_flops(mc.llm, seq_len, head_positions)
  images = global_batch * images_per_row
  return StepFlops(vit=images * vit_forward_flops(mc.vision),
                   connector=images * connector_train_flops(mc),
                   llm=global_batch * _llm_train(w, a, llm_trainable))


def real_step_flops(mc: config_lib.ModelConfig, *, tokens: float, images: float,
                    attention_pairs: float, head_tokens: float, llm_trainable: bool) -> StepFlops:
  """Model FLOPs of the real (non-padding) work of one step: ``tokens`` real tokens,
  ``images`` real images, ``attention_pairs`` = sum over samples of ``L^2`` (causal: half
  of it is counted), the LM head on ``head_tokens`` tokens. For MFU."""
  per_token, head, pair = llm_coefficients(mc.llm)
  w = tokens * per_token + head_tokens * head
  return StepFlops(vit=images * vit_forward_flops(mc.vision),
                   connector=images * connector_train_flops(mc),
                   llm=_llm_train(w, pair * attention_pairs, llm_trainable))


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

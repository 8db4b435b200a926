"""The Perceiver-Resampler variant of the Anchor Former (``docs/method.md`` 1.4).

Per layer (pre-LN, residual): the latents attend over the LayerNorm'ed media only
(no latents in the keys), 8 heads of 64, no biases, then a LayerNorm -> Linear x4 ->
exact GELU -> Linear feed-forward; a final LayerNorm. Queries are given from outside
(anchors, pooled or random tokens) or, for the ``pr`` baseline, are the learnable
``latents`` (N(0, 1) init, docs/method.md 1.8).

Parameters (layers stacked on a leading ``layers`` axis)::

  layers/{norm_media,norm_latents,ff_norm}/{scale,bias}
  layers/{to_q,to_k,to_v,to_out,ff_in,ff_out}/kernel      [in, out]
  norm/{scale,bias}
  latents [num_latents, D]                                 (pr only)

The official fused ``to_kv`` weight ``[2*inner, D]`` is ``to_k`` (its first ``inner``
rows) and ``to_v`` (the rest), kept apart so tensor parallelism shards whole heads.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax.models.attention import attention as attend
from acformer_jax.models.layers import (DType, constrain, dense, layer_norm, partitioned, stacked,
                                        to_dtype)

# PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (docs/method.md 1.4).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
LN_EPS = 1e-5
_ACT = ("activation_batch", "activation_length", "activation_embed")


class ResamplerLayer(nn.Module):
  """One cross-attention + feed-forward layer; scan body ``(latents, media) -> latents``."""
  heads: int
  dim_head: int
  ff_mult: int
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"

  @nn.compact
  def __call__(self, latents: jax.Array, media: jax.Array):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    lin = dict(use_bias=False, kernel_init=TORCH_KERNEL_INIT, **kw)
    d, h, hd = latents.shape[-1], self.heads, self.dim_head
    b, nq, nk = latents.shape[0], latents.shape[1], media.shape[1]
    x = layer_norm(LN_EPS, name="norm_media", **kw)(media)
    lat = layer_norm(LN_EPS, name="norm_latents", **kw)(latents)
    q = dense(h * hd, ("conn_embed", "conn_heads"), name="to_q", **lin)(lat) * hd ** -0.5
    k = dense(h * hd, ("conn_embed", "conn_heads"), name="to_k", **lin)(x)
    v = dense(h * hd, ("conn_embed", "conn_heads"), name="to_v", **lin)(x)
    heads_axes = ("activation_batch", "activation_length", "activation_heads", None)
    q = constrain(q.reshape(b, nq, h, hd), heads_axes)
    k = constrain(k.reshape(b, nk, h, hd), heads_axes)
    v = constrain(v.reshape(b, nk, h, hd), heads_axes)
    out = attend(q, k, v, impl=self.attention, causal=False, scale=1.0).reshape(b, nq, h * hd)
    latents = dense(d, ("conn_heads", "conn_embed"), name="to_out", **lin)(out) + latents
    y = layer_norm(LN_EPS, name="ff_norm", **kw)(latents)
    y = dense(d * self.ff_mult, ("conn_embed", "conn_mlp"), name="ff_in", **lin)(y)
    y = constrain(nn.gelu(y, approximate=False),
                  ("activation_batch", "activation_length", "activation_mlp"))
    y = dense(d, ("conn_mlp", "conn_embed"), name="ff_out", **lin)(y)
    return constrain(y + latents, _ACT), None


class Resampler(nn.Module):
  """``Resampler(...)(media [B,S,D], queries [B,Q,D] | None) -> [B,Q,D]`` (docs/method.md 1.4).

  Attributes:
    depth, heads, dim_head, ff_mult: ``ConnectorConfig`` fields.
    num_latents: number of learnable queries; used when ``queries`` is None (``pr``).
    attention: ``ModelConfig.attention`` for the cross-attention (``models/attention.py``).
    scan: ``False`` unrolls the layer scan (same parameters).
    remat_policy: ``ModelConfig.remat_policy`` (``layers.remat_policy``); the layers carry no
      checkpoint names, so the ``save_*`` / ``offload_*`` policies recompute them like ``full``.
      Without remat a trained resampler keeps every layer's attention probabilities and MLP
      activations of every image for the backward (0.6 GiB per chip at 7 images per row).
  """
  depth: int = 6
  heads: int = 8
  dim_head: int = 64
  ff_mult: int = 4
  num_latents: Optional[int] = None
  scan: bool = True
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, media: jax.Array, queries: Optional[jax.Array]) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = media.shape[-1]
    if queries is None:
      if not self.num_latents:
        raise ValueError("Resampler: pass queries or set num_latents (learnable queries)")
      latents = self.param("latents", partitioned(nn.initializers.normal(1.0),
                                                  ("conn_queries", "conn_embed")),
                           (self.num_latents, d), to_dtype(self.param_dtype))
      queries = jnp.broadcast_to(latents[None], (media.shape[0],) + latents.shape)
    queries = queries.astype(to_dtype(self.dtype))
    run = stacked(ResamplerLayer, length=self.depth, scan_layers=self.scan,
                  remat=self.remat_policy, in_axes=(nn.broadcast,))
    out, _ = run(self.heads, self.dim_head, self.ff_mult, attention=self.attention, name="layers",
                 **kw)(queries, media)
    return layer_norm(LN_EPS, name="norm", **kw)(out)

"""CLIP-style vision transformer (spec ``acformer.md`` 3.2, 2.8, 1.2).

``VisionTransformer(config)(pixel_values [B,H,W,C]) -> (features [B,N+1,D], cls_attn [B,heads,N])``
where ``features`` equals HF ``hidden_states[select_layer]`` and ``cls_attn`` is the
post-softmax attention of the CLS query over the N patch tokens in that same block.
Only the first ``config.num_computed_layers`` blocks are run (under ``layers``); the
remaining checkpoint blocks live in ``unused_layers`` and ``post_layernorm`` is kept
for lossless round trips; both are created at init only and never computed.
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax.config import VisionConfig
from acformer_jax.models.attention import attention as attend
from acformer_jax.models.layers import (DEFAULT_KERNEL_INIT, DType, constrain, dense,
                                        layer_norm, partitioned, stacked, to_dtype)

_ACT = ("activation_batch", "activation_length", "activation_embed")


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's activation: ``x * sigmoid(1.702 x)`` (spec 3.3)."""
  return x * jax.nn.sigmoid(1.702 * x)


class VisionEmbeddings(nn.Module):
  """Patch conv (no bias) + class embedding + learned absolute positions."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    cfg, dt, pdt = self.config, to_dtype(self.dtype), to_dtype(self.param_dtype)
    p, d = cfg.patch_size, cfg.hidden_size
    patches = nn.Conv(
        d, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=dt, param_dtype=pdt,
        kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("vit_patch", None, None, "vit_embed")),
        name="patch_embedding")(pixel_values.astype(dt))
    b = patches.shape[0]
    patches = patches.reshape(b, -1, d)  # row-major over the grid, like HF's flatten(2)
    cls = self.param("class_embedding", partitioned(DEFAULT_KERNEL_INIT, ("vit_embed",)), (d,), pdt)
    pos = self.param("position_embedding", partitioned(DEFAULT_KERNEL_INIT, ("vit_pos", "vit_embed")),
                     (cfg.num_patches + 1, d), pdt)
    cls = jnp.broadcast_to(cls.astype(dt), (b, 1, d))
    return jnp.concatenate([cls, patches], axis=1) + pos.astype(dt)[None]


class VisionAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections; also returns the
  float32 post-softmax CLS row over the patch tokens ``[B, heads, N]``."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = self.config
    d, h = cfg.hidden_size, cfg.num_heads
    hd = d // h
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, _ = x.shape
    q, k, v = (dense(d, ("vit_embed", "vit_heads"), name=f"{nm}_proj", **kw)(x).reshape(b, n, h, hd)
               for nm in ("q", "k", "v"))
    q, k, v = (constrain(t, ("activation_batch", "activation_length", "activation_heads", None))
               for t in (q, k, v))
    out = attend(q, k, v, impl=self.attention, causal=False).reshape(b, n, d)
    out = dense(d, ("vit_heads", "vit_embed"), name="out_proj", **kw)(out)
    # The CLS query's post-softmax row (the anchors' input): [B, heads, N+1], recomputed
    # apart from the kernel, which never materialises probabilities.
    cls_scores = jnp.einsum("bhd,bkhd->bhk", q[:, 0], k).astype(jnp.float32) * hd ** -0.5
    return out, jax.nn.softmax(cls_scores, axis=-1)[:, :, 1:]


class VisionMLP(nn.Module):
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    y = quick_gelu(dense(cfg.intermediate_size, ("vit_embed", "vit_mlp"), name="fc1", **kw)(x))
    y = constrain(y, ("activation_batch", "activation_length", "activation_mlp"))
    return dense(cfg.hidden_size, ("vit_mlp", "vit_embed"), name="fc2", **kw)(y)


class VisionBlock(nn.Module):
  """Pre-LN encoder block; scan body ``x -> (x, cls_attn)``."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn, cls_attn = VisionAttention(cfg, name="self_attn", attention=self.attention, **kw)(
        layer_norm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x))
    x = x + attn
    x = x + VisionMLP(cfg, name="mlp", **kw)(layer_norm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x))
    return constrain(x, _ACT), cls_attn


class VisionTransformer(nn.Module):
  """CLIP vision tower truncated at ``config.select_layer`` (spec 2.8).

  Attributes:
    config: the ``VisionConfig``.
    dtype: compute dtype (``ModelConfig.dtype``); softmax is always float32.
    param_dtype: parameter dtype (``ModelConfig.param_dtype``).
    scan_layers: ``False`` unrolls the layer scan (same parameter layout).
    remat_policy: see ``layers.remat_policy``.
    attention: ``ModelConfig.attention`` (``models/attention.py``).
  """
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention: str = "xla"

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = self.config
    s, c = cfg.image_size, cfg.num_channels
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (s, s, c):
      raise ValueError(f"VisionTransformer expects pixel_values [B,{s},{s},{c}] (NHWC), "
                       f"got shape {tuple(pixel_values.shape)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = VisionEmbeddings(cfg, name="embeddings", **kw)(pixel_values)
    x = layer_norm(cfg.layer_norm_eps, name="pre_layrnorm", **kw)(x)
    x = constrain(x, _ACT)
    n = cfg.num_computed_layers
    run = stacked(VisionBlock, length=n, scan_layers=self.scan_layers,
                  remat=self.remat_policy, in_axes=())
    features, cls_attn = run(cfg, name="layers", attention=self.attention, **kw)(x)
    if self.is_initializing():  # parameters kept for round trips, never computed
      if cfg.num_layers > n:
        rest = stacked(VisionBlock, length=cfg.num_layers - n, scan_layers=True, remat="none",
                       in_axes=())
        rest(cfg, name="unused_layers", **kw)(features)
      layer_norm(cfg.layer_norm_eps, name="post_layernorm", **kw)(features[:, 0])
    return features, cls_attn[-1]

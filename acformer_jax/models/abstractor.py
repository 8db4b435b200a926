"""C-Abstractor baseline (Honeybee) and adaptive average pooling (``docs/method.md`` 1.8).

The spec's official config ``CAbstractor(1024, depth=3, 144 tokens)``: the patch grid
(CLS dropped) -> RegStage(depth) -> adaptive average pool to sqrt(K) x sqrt(K) ->
RegStage(depth) -> raster-order tokens (K of them, no CLS). No positional embedding. A RegStage block is
timm's RegNet ``Bottleneck`` with bottle ratio 1, group size 1, SE ratio 0.25, SiLU
and channel-wise LayerNorm (eps 1e-5: timm 0.6.13 builds the convs as ``ConvNormAct``,
which turns ``LayerNorm2d`` into ``LayerNormAct2d`` with its default eps), identity shortcut (in = out, stride 1)::

  x -> 1x1 conv, LN, SiLU -> 3x3 depthwise conv, LN, SiLU -> SE (mean, fc, SiLU,
    fc, sigmoid gate) -> 1x1 conv, LN -> + x -> SiLU

Convs have no bias; the 1x1 convs are stored as 2-D Dense kernels ``[in, out]``
(torch ``[out, in, 1, 1]``), the depthwise kernel as ``[3, 3, 1, C]``.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax.models.layers import DType, dense, layer_norm, partitioned, to_dtype
from acformer_jax.models.resampler import TORCH_KERNEL_INIT

LN2D_EPS = 1e-5  # timm 0.6.13 ConvNormAct swaps LayerNorm2d for LayerNormAct2d (eps 1e-5)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` averaging weights of torch ``AdaptiveAvgPool1d`` windows."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def pool_grid(x: jax.Array, out_grid: int) -> jax.Array:
  """Adaptive 2-D average pooling of ``[B, G, G, D]`` to ``[B, out, out, D]``."""
  p = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_grid), x.dtype)
  return jnp.einsum("oi,pj,bijd->bopd", p, p, x)


def pool_patches(patches: jax.Array, out_grid: int) -> jax.Array:
  """:func:`pool_grid` on raster-ordered tokens ``[B, G*G, D] -> [B, out*out, D]``."""
  b, n, d = patches.shape
  g = math.isqrt(n)
  pooled = pool_grid(patches.reshape(b, g, g, d), out_grid)
  return pooled.reshape(b, out_grid * out_grid, d)


class RegBlock(nn.Module):
  """timm RegNet ``Bottleneck`` as configured by Honeybee (module docstring)."""
  se_ratio: float = 0.25
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    se = int(round(c * self.se_ratio))
    lin = dict(kernel_init=TORCH_KERNEL_INIT, **kw)
    ln = lambda name: layer_norm(LN2D_EPS, name=name, **kw)
    h = nn.silu(ln("norm1")(dense(c, ("conn_embed", "conn_mlp"), use_bias=False, name="conv1",
                                  **lin)(x)))
    h = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, use_bias=False,
                dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype),
                kernel_init=partitioned(TORCH_KERNEL_INIT, (None, None, None, "conn_mlp")),
                name="conv2")(h)
    h = nn.silu(ln("norm2")(h))
    gate = jnp.mean(h, axis=(1, 2))
    gate = nn.silu(dense(se, ("conn_mlp", None), use_bias=True, name="se_fc1", **lin)(gate))
    gate = jax.nn.sigmoid(dense(c, (None, "conn_mlp"), use_bias=True, name="se_fc2", **lin)(gate))
    h = h * gate[:, None, None, :]
    h = ln("norm3")(dense(c, ("conn_mlp", "conn_embed"), use_bias=False, name="conv3", **lin)(h))
    return nn.silu(h + x)


class CAbstractor(nn.Module):
  """``CAbstractor(depth, out_grid)(patches [B, G*G, C]) -> [B, out_grid**2, C]``."""
  depth: int = 3
  out_grid: int = 12
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, c = patches.shape
    g = math.isqrt(n)
    x = patches.reshape(b, g, g, c)
    for i in range(self.depth):
      x = RegBlock(name=f"s1_b{i + 1}", **kw)(x)
    x = pool_grid(x, self.out_grid)
    for i in range(self.depth):
      x = RegBlock(name=f"s2_b{i + 1}", **kw)(x)
    return x.reshape(b, self.out_grid * self.out_grid, c)

"""Vision-language connectors: the Anchor Former and the paper's baselines.

Spec: ``acformer.md`` 1.4 (resampler), 1.5 (``mlp2x_gelu`` projector), 1.7-1.8
(baselines, token counts). One module, :class:`Connector`, dispatches on
``ConnectorConfig.type``; every variant ends in the LLaVA projector (``linear`` ends in
a single Linear). Token counts for a budget K (``num_queries``) are given by
:func:`acformer_jax.config.num_visual_tokens`:

=============  ======================================================  ==============
type           visual tokens                                           count (K=144)
=============  ======================================================  ==============
linear         all patches (CLS dropped) -> Linear                     576
mlp2x_gelu     all patches (CLS dropped) -> MLP (LLaVA-1.5)            576
pooling        CLS + patch grid avg-pooled to sqrt(K)^2 -> MLP         K+1 = 145
pooling_pr     the pooling tokens as resampler queries -> MLP          K+1 = 145
random_pr      CLS + K random patches as resampler queries -> MLP      K+1 = 145
pr             K+1 learnable latent queries -> resampler -> MLP        K+1 = 145
c_abstractor   CLS + C-Abstractor (RegStage, pool, RegStage) -> MLP    K+1 = 145
top_p          the anchors of 1.3 straight to the MLP                  1+H*(K//H) = 145
evit           CLS + top-K by mean CLS attention + 1 fused -> MLP      K+2 = 146
acformer       anchors as resampler queries -> MLP                     1+H*(K//H) = 145
=============  ======================================================  ==============

Readings where the paper is silent (spec 1.8 marks them UNCONFIRMED): the budgets
follow the paper's "V-T Num" column (65/145/257; E-ViT 146), so ``pr`` has K+1
latents (the code default is 144) and ``c_abstractor`` prepends the CLS feature to
its K pooled tokens; pooling generalises 2x2 mean pooling to adaptive average
pooling onto a sqrt(K) x sqrt(K) grid (torch ``AdaptiveAvgPool2d`` windows: 24->8 is
3x3, 24->12 is 2x2, 24->16 overlapping 2x2); ``random_pr`` draws K distinct patches
per image from ``rng`` and keeps them in raster order, as the anchors are; E-ViT
keeps its tokens in descending-attention order (``youweiliang/evit``). Parameters
use PyTorch's default kernel init (Linear/Conv: U(+-1/sqrt(fan_in)); LN: 1/0; latents:
N(0, 1)) as the official code does (spec 1.4); biases start at 0.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax.models.abstractor import CAbstractor, pool_patches
from acformer_jax.models.anchors import gather_tokens, select_anchors
from acformer_jax.models.layers import DType, dense
from acformer_jax.models.resampler import TORCH_KERNEL_INIT, Resampler

ACT_AXES = ("activation_batch", "activation_length", "activation_embed")


def random_token_indices(rng: jax.Array, batch: int, num_patches: int, k: int) -> jax.Array:
  """CLS + ``k`` distinct random patches per image, ascending: int32 ``[B, k+1]``."""
  _, idx = jax.lax.top_k(jax.random.uniform(rng, (batch, num_patches)), k)
  idx = jnp.sort(idx, axis=-1).astype(jnp.int32) + 1
  return jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), idx], axis=1)


def evit_tokens(features: jax.Array, cls_attn: jax.Array, k: int) -> jax.Array:
  """E-ViT reduction (spec 1.8): ``[CLS, top-k patches, fused]``, ``[B, k+2, D]``.

  Patches are ranked by CLS attention averaged over heads (kept in descending
  order); the rest are fused into one token, their sum weighted by that
  (un-renormalised) attention.
  """
  score = jnp.mean(cls_attn.astype(jnp.float32), axis=1)            # [B, N]
  _, keep = jax.lax.top_k(score, k)
  patches = features[:, 1:]
  kept = gather_tokens(patches, keep)
  batch = features.shape[0]
  kept_mask = jnp.zeros(score.shape, jnp.bool_).at[jnp.arange(batch)[:, None], keep].set(True)
  weights = jnp.where(kept_mask, 0.0, score).astype(features.dtype)
  fused = jnp.einsum("bn,bnd->bd", weights, patches)[:, None]
  return jnp.concatenate([features[:, :1], kept, fused], axis=1)


def _square_grid(k: int, grid: int, kind: str) -> int:
  side = math.isqrt(k)
  if side * side != k or not 1 <= side <= grid:
    raise ValueError(
        f"connector.num_queries={k}: connector.type={kind!r} pools the {grid}x{grid} patch "
        f"grid onto a square grid, so num_queries must be a perfect square <= {grid * grid}")
  return side


class MlpProjector(nn.Module):
  """LLaVA projector (spec 1.5): ``linear_1`` [-> exact GELU -> ``linear_2``]."""
  out_features: int
  two_layer: bool = True
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=True, kernel_init=TORCH_KERNEL_INIT, dtype=self.dtype,
              param_dtype=self.param_dtype)
    x = dense(self.out_features, ("conn_embed", "conn_mlp"), name="linear_1", **kw)(x)
    if self.two_layer:
      x = nn.gelu(x, approximate=False)
      x = dense(self.out_features, ("conn_mlp", "embed"), name="linear_2", **kw)(x)
    return x


class Connector(nn.Module):
  """``Connector(model_config)(features [B,N+1,Dv], cls_attn [B,H,N], *, rng=None)``.

  Returns ``[B, num_visual_tokens(config), llm.hidden_size]``. ``rng`` is needed by
  ``random_pr`` only (deterministic given the step's key).
  """
  config: config_lib.ModelConfig

  @nn.compact
  def __call__(self, features, cls_attn, *, rng=None):
    cfg = self.config
    c, v = cfg.connector, cfg.vision
    kind, k = c.type, c.num_queries
    n_out = config_lib.num_visual_tokens(cfg)
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    b, s, _ = features.shape
    if s != v.num_patches + 1 or cls_attn.shape != (b, v.num_heads, v.num_patches):
      raise ValueError(
          f"Connector expects features [B, {v.num_patches + 1}, Dv] and cls_attn "
          f"[B, {v.num_heads}, {v.num_patches}] (vision config); got {features.shape} "
          f"and {cls_attn.shape}")
    features = nn.with_logical_constraint(features.astype(dtype), ACT_AXES)
    cls_attn = jax.lax.stop_gradient(cls_attn)
    cls_tok, patches = features[:, :1], features[:, 1:]

    def resampler(queries, num_latents=None):
      mod = Resampler(depth=c.depth, heads=c.heads, dim_head=c.dim_head, ff_mult=c.ff_mult,
                      num_latents=num_latents, scan=cfg.scan_layers, dtype=dtype,
                      param_dtype=pdtype, attention=cfg.attention, name="resampler")
      return mod(features, queries)

    if kind in ("linear", "mlp2x_gelu"):
      tokens = patches
    elif kind in ("pooling", "pooling_pr"):
      side = _square_grid(k, v.grid_size, kind)
      tokens = jnp.concatenate([cls_tok, pool_patches(patches, side)], axis=1)
      if kind == "pooling_pr":
        tokens = resampler(tokens)
    elif kind in ("top_p", "acformer"):
      tokens = gather_tokens(features, select_anchors(cls_attn, k))
      if kind == "acformer":
        tokens = resampler(tokens)
    elif kind == "random_pr":
      if rng is None:
        raise ValueError("connector.type='random_pr' needs rng= (the step's PRNG key)")
      if not 1 <= k <= v.num_patches:
        raise ValueError(f"connector.num_queries={k} must be in 1..{v.num_patches} for random_pr")
      tokens = resampler(gather_tokens(features, random_token_indices(rng, b, v.num_patches, k)))
    elif kind == "pr":
      tokens = resampler(None, num_latents=k + 1)
    elif kind == "c_abstractor":
      side = _square_grid(k, v.grid_size, kind)
      abstracted = CAbstractor(depth=c.abstractor_depth, out_grid=side, dtype=dtype,
                               param_dtype=pdtype, name="abstractor")(patches)
      tokens = jnp.concatenate([cls_tok, abstracted], axis=1)
    elif kind == "evit":
      if not 1 <= k < v.num_patches:
        raise ValueError(f"connector.num_queries={k} must be in 1..{v.num_patches - 1} for evit")
      tokens = evit_tokens(features, cls_attn, k)
    else:  # num_visual_tokens has already rejected unknown types
      raise AssertionError(kind)

    out = MlpProjector(cfg.llm.hidden_size, two_layer=kind != "linear", dtype=dtype,
                       param_dtype=pdtype, name="projector")(tokens)
    assert out.shape[1] == n_out, (kind, out.shape, n_out)
    return nn.with_logical_constraint(out, ACT_AXES)

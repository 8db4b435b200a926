"""Vision-language connectors: the Anchor Former and the paper's baselines, and the
connector registry.

Spec: ``docs/method.md`` 1.4 (resampler), 1.5 (``mlp2x_gelu`` projector), 1.7-1.8
(baselines, token counts). Each connector is one :class:`ConnectorSpec`, registered with
:func:`register_connector` under its ``ConnectorConfig.type``: the tokens it hands the
projector (``build``), its visual-token count, its training FLOPs, its validation and its
stage-1 sequence-length rule. :class:`Connector` builds the spec's tokens and ends in the
LLaVA projector (``linear`` ends in a single Linear). Counts for a budget K (``num_queries``):

=============  ======================================================  ==============
type           visual tokens                                           count (K=144)
=============  ======================================================  ==============
linear         all patches (CLS dropped) -> Linear                     576
mlp2x_gelu     all patches (CLS dropped) -> MLP (LLaVA-1.5)            576
pooling        CLS + patch grid avg-pooled to sqrt(K)^2 -> MLP         K+1 = 145
pooling_pr     the pooling tokens as resampler queries -> MLP          K+1 = 145
random_pr      CLS + K random patches as resampler queries -> MLP      K+1 = 145
pr             K+1 learnable latent queries -> resampler -> MLP        K+1 = 145
c_abstractor   C-Abstractor (RegStage, pool, RegStage) -> MLP          K = 144
top_p          the anchors of 1.3 straight to the MLP                  1+H*(K//H) = 145
evit           CLS + top-K by mean CLS attention + 1 fused -> MLP      K+2 = 146
acformer       anchors as resampler queries -> MLP                     1+H*(K//H) = 145
=============  ======================================================  ==============

Readings where the paper is silent (docs/method.md 1.8 marks them UNCONFIRMED): the budgets
follow the paper's "V-T Num" column (65/145/257; E-ViT 146), so ``pr`` has K+1
latents (the code default is 144); ``c_abstractor`` is built as the official
``CAbstractor(1024, 3, 144)`` is: K tokens, no CLS. Pooling generalises 2x2 mean pooling to adaptive average
pooling onto a sqrt(K) x sqrt(K) grid (torch ``AdaptiveAvgPool2d`` windows: 24->8 is
3x3, 24->12 is 2x2, 24->16 overlapping 2x2); ``random_pr`` draws K distinct patches
per image from ``rng`` and keeps them in raster order, as the anchors are. Without an
``rng`` (inference: ``generate``, ``evaluate``) it uses one fixed draw from
``PRNGKey(0)`` shared by every image, so outputs do not depend on the batch size or a
row's position. E-ViT keeps its tokens in descending-attention order
(``youweiliang/evit``). Parameters use PyTorch's default kernel init (Linear/Conv:
U(+-1/sqrt(fan_in)); LN: 1/0; latents: N(0, 1)) as the official code does (docs/method.md 1.4);
biases start at 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax.models.abstractor import CAbstractor, pool_patches
from acformer_jax.models.anchors import gather_tokens, num_anchor_tokens, select_anchors
from acformer_jax.models.layers import DType, dense, layer_norm
from acformer_jax.models.registry import Registry
from acformer_jax.models.resampler import TORCH_KERNEL_INIT, Resampler

ACT_AXES = ("activation_batch", "activation_length", "activation_embed")
INFERENCE_DRAW_SEED = 0  # random_pr without rng: one fixed draw (module docstring)
INPUT_NORM_EPS = 1e-5  # connector.input_norm (torch nn.LayerNorm default)


def random_token_indices(rng: Optional[jax.Array], batch: int, num_patches: int,
                         k: int) -> jax.Array:
  """CLS + ``k`` distinct random patches per image, ascending: int32 ``[B, k+1]``.

  ``rng=None``: the same draw (from ``PRNGKey(INFERENCE_DRAW_SEED)``) for every image.
  """
  if rng is None:
    u = jnp.broadcast_to(jax.random.uniform(jax.random.PRNGKey(INFERENCE_DRAW_SEED),
                                            (num_patches,)), (batch, num_patches))
  else:
    u = jax.random.uniform(rng, (batch, num_patches))
  _, idx = jax.lax.top_k(u, k)
  idx = jnp.sort(idx, axis=-1).astype(jnp.int32) + 1
  return jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), idx], axis=1)


def evit_tokens(features: jax.Array, cls_attn: jax.Array, k: int) -> jax.Array:
  """E-ViT reduction (docs/method.md 1.8): ``[CLS, top-k patches, fused]``, ``[B, k+2, D]``.

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


def _square_problems(mc: config_lib.ModelConfig) -> List[str]:
  k, grid, kind = mc.connector.num_queries, mc.vision.grid_size, mc.connector.type
  side = math.isqrt(max(k, 0))
  if side * side != k or not 1 <= side <= grid:
    return [f"connector.num_queries={k}: connector.type={kind!r} pools the {grid}x{grid} patch "
            f"grid onto a square grid, so num_queries must be a perfect square <= {grid * grid}"]
  return []


def _square_grid(mc: config_lib.ModelConfig) -> int:
  problems = _square_problems(mc)
  if problems:
    raise ValueError(problems[0])
  return math.isqrt(mc.connector.num_queries)


class MlpProjector(nn.Module):
  """LLaVA projector (docs/method.md 1.5): ``linear_1`` [-> exact GELU -> ``linear_2``]."""
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


# --- the registry ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a spec's ``build`` sees inside :class:`Connector` (modules it creates there
  become the connector's submodules)."""
  config: config_lib.ModelConfig
  features: jax.Array          # [B, N+1, Dv], token 0 = CLS (or the tower's summary token)
  anchor_attn: jax.Array       # [B, H, N], the tower's anchor source
  rng: Optional[jax.Array]
  dtype: DType
  param_dtype: DType

  def resampler(self, queries, num_latents=None):
    c = self.config.connector
    return Resampler(depth=c.depth, heads=c.heads, dim_head=c.dim_head, ff_mult=c.ff_mult,
                     num_latents=num_latents, scan=self.config.scan_layers, dtype=self.dtype,
                     param_dtype=self.param_dtype, attention=self.config.attention,
                     remat_policy=self.config.remat_policy, name="resampler")(self.features, queries)


@dataclasses.dataclass(frozen=True)
class ConnectorSpec:
  """One connector.

  Attributes:
    name: the ``connector.type`` value.
    build: ``BuildContext -> [B, tokens, Dv]``, the projector's input.
    tokens: ``ModelConfig -> int``, visual tokens emitted (= ``build``'s length).
    validate: ``ModelConfig -> [problems]``.
    resampler_queries: ``ModelConfig -> int`` queries through the resampler (0: none).
    extra_flops: ``ModelConfig -> float``: forward+backward FLOPs per image of anything
      other than the resampler and the projector (e.g. the C-Abstractor).
    reads_frozen: the projector reads the frozen ViT features (its first matmul needs no
      input gradient).
    linear_projector: a single Linear instead of the two-layer MLP.
    uses_anchor_attn: reads the tower's anchor source.
    anchor_budget: ``ModelConfig -> int``, the budget K it hands ``select_anchors``
      (docs/method.md 1.3; 0 when it selects no anchors). ``analyze`` draws that budget.
  """
  name: str
  build: Callable[[BuildContext], jax.Array]
  tokens: Callable[[config_lib.ModelConfig], int]
  validate: Callable[[config_lib.ModelConfig], List[str]] = lambda mc: []
  resampler_queries: Callable[[config_lib.ModelConfig], int] = lambda mc: 0
  extra_flops: Callable[[config_lib.ModelConfig], float] = lambda mc: 0.0
  reads_frozen: bool = True
  linear_projector: bool = False
  uses_anchor_attn: bool = False
  anchor_budget: Callable[[config_lib.ModelConfig], int] = lambda mc: 0

  def train_flops(self, mc: config_lib.ModelConfig) -> float:
    """Forward + backward FLOPs of the (trained) connector for one image (trainer/flops.py
    states the counting rules)."""
    c, v = mc.connector, mc.vision
    dv, dl, nv = v.hidden_size, mc.llm.hidden_size, self.tokens(mc)
    total = self.extra_flops(mc)
    q = self.resampler_queries(mc)
    if q:
      m, hd, f = v.num_patches + 1, c.heads * c.dim_head, c.ff_mult * dv
      block = (2.0 * q * dv * hd + 4.0 * m * dv * hd + 4.0 * q * m * hd + 2.0 * q * hd * dv
               + 4.0 * q * dv * f)
      total += 3.0 * c.depth * block
    lin1 = 2.0 * nv * dv * dl
    lin2 = 0.0 if self.linear_projector else 2.0 * nv * dl * dl
    return total + (2.0 if self.reads_frozen else 3.0) * lin1 + 3.0 * lin2

  def stage1_max_length(self, mc: config_lib.ModelConfig, text_tokens: int = 128) -> int:
    """Stage-1 ``data.max_length``: visual tokens + BOS + ``text_tokens``, rounded up to a
    multiple of 128 (``experiment.caption_max_length``)."""
    return -(-(self.tokens(mc) + 1 + text_tokens) // 128) * 128


CONNECTORS: Registry[ConnectorSpec] = Registry(
    "connector.type", same=lambda old, new: old.build is new.build, sort=False,
    missing=lambda name, names: f"connector.type={name!r} is not one of {names}")


def register_connector(spec: ConnectorSpec, *, replace: bool = False) -> ConnectorSpec:
  """Adds ``spec`` (a new name, or the same spec again on re-import)."""
  return CONNECTORS.register(spec.name, spec, replace=replace)


def connector_names() -> Tuple[str, ...]:
  """The registered ``connector.type`` names, in registration order."""
  return CONNECTORS.names()


def connector(name: str) -> ConnectorSpec:
  return CONNECTORS.get(name)


def validate(mc: config_lib.ModelConfig) -> List[str]:
  if mc.connector.type not in CONNECTORS:
    return [f"model.connector.type={mc.connector.type!r} is not one of {connector_names()}"]
  return list(connector(mc.connector.type).validate(mc))


# --- the entries -----------------------------------------------------------------------
def _anchor_problems(mc: config_lib.ModelConfig) -> List[str]:
  k, v = mc.connector.num_queries, mc.vision
  if k < v.num_heads:
    return [f"model.connector.num_queries={k} is below the ViT head count "
            f"model.vision.num_heads={v.num_heads}: every head must contribute >= 1 anchor"]
  if v.num_heads * (k // v.num_heads) > v.num_patches:
    return [f"model.connector.num_queries={k} exceeds the {v.num_patches} patches of the ViT"]
  return []


def _range_problems(lo_hi):
  def check(mc):
    k, (lo, hi) = mc.connector.num_queries, lo_hi(mc.vision.num_patches)
    if not lo <= k <= hi:
      return [f"connector.num_queries={k} must be in {lo}..{hi} for {mc.connector.type}"]
    return []
  return check


def _anchors(ctx: BuildContext) -> jax.Array:
  return gather_tokens(ctx.features, select_anchors(ctx.anchor_attn,
                                                    ctx.config.connector.num_queries))


def _pooled(ctx: BuildContext) -> jax.Array:
  side = _square_grid(ctx.config)
  return jnp.concatenate([ctx.features[:, :1], pool_patches(ctx.features[:, 1:], side)], axis=1)


def _random(ctx: BuildContext) -> jax.Array:
  v, k = ctx.config.vision, ctx.config.connector.num_queries
  problems = _range_problems(lambda n: (1, n))(ctx.config)
  if problems:
    raise ValueError(problems[0])
  idx = random_token_indices(ctx.rng, ctx.features.shape[0], v.num_patches, k)
  return ctx.resampler(gather_tokens(ctx.features, idx))


def _c_abstractor(ctx: BuildContext) -> jax.Array:
  c = ctx.config.connector
  return CAbstractor(depth=c.abstractor_depth, out_grid=_square_grid(ctx.config),
                     dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                     name="abstractor")(ctx.features[:, 1:])


def _c_abstractor_flops(mc: config_lib.ModelConfig) -> float:
  dv, side2 = mc.vision.hidden_size, mc.connector.num_queries
  per_px = 2.0 * (2 * dv * dv + 9 * dv)  # 1x1 conv, depthwise 3x3, 1x1 conv
  return 3.0 * mc.connector.abstractor_depth * per_px * (mc.vision.num_patches + side2)


def _evit(ctx: BuildContext) -> jax.Array:
  problems = _range_problems(lambda n: (1, n - 1))(ctx.config)
  if problems:
    raise ValueError(problems[0])
  return evit_tokens(ctx.features, ctx.anchor_attn, ctx.config.connector.num_queries)


_ALL_PATCHES = lambda mc: mc.vision.num_patches  # pylint: disable=unnecessary-lambda-assignment
_K_PLUS_1 = lambda mc: mc.connector.num_queries + 1  # pylint: disable=unnecessary-lambda-assignment
_ANCHORS = lambda mc: num_anchor_tokens(mc.vision.num_heads, mc.connector.num_queries)  # pylint: disable=unnecessary-lambda-assignment
_K = lambda mc: mc.connector.num_queries  # pylint: disable=unnecessary-lambda-assignment

for _spec in (
    ConnectorSpec("linear", lambda ctx: ctx.features[:, 1:], _ALL_PATCHES, linear_projector=True),
    ConnectorSpec("mlp2x_gelu", lambda ctx: ctx.features[:, 1:], _ALL_PATCHES),
    ConnectorSpec("pooling", _pooled, _K_PLUS_1, validate=_square_problems),
    ConnectorSpec("pooling_pr", lambda ctx: ctx.resampler(_pooled(ctx)), _K_PLUS_1,
                  validate=_square_problems, resampler_queries=_K_PLUS_1, reads_frozen=False),
    ConnectorSpec("random_pr", _random, _K_PLUS_1, validate=_range_problems(lambda n: (1, n)),
                  resampler_queries=_K_PLUS_1, reads_frozen=False),
    ConnectorSpec("pr", lambda ctx: ctx.resampler(None, ctx.config.connector.num_queries + 1),
                  _K_PLUS_1, resampler_queries=_K_PLUS_1, reads_frozen=False),
    ConnectorSpec("c_abstractor", _c_abstractor, lambda mc: mc.connector.num_queries,
                  validate=_square_problems, extra_flops=_c_abstractor_flops, reads_frozen=False),
    ConnectorSpec("top_p", _anchors, _ANCHORS, validate=_anchor_problems, uses_anchor_attn=True,
                  anchor_budget=_K),
    ConnectorSpec("evit", _evit, lambda mc: mc.connector.num_queries + 2,
                  validate=_range_problems(lambda n: (1, n - 1)), uses_anchor_attn=True),
    ConnectorSpec("acformer", lambda ctx: ctx.resampler(_anchors(ctx)), _ANCHORS,
                  validate=_anchor_problems, resampler_queries=_ANCHORS, reads_frozen=False,
                  uses_anchor_attn=True, anchor_budget=_K),
):
  register_connector(_spec)


class Connector(nn.Module):
  """``Connector(model_config)(features [B,N+1,Dv], cls_attn [B,H,N], *, rng=None)``.

  Returns ``[B, num_visual_tokens(config), llm.hidden_size]``. ``rng`` is used by
  ``random_pr`` only (a fixed draw without it, see the module docstring).
  """
  config: config_lib.ModelConfig

  @nn.compact
  def __call__(self, features, cls_attn, *, rng=None):
    cfg = self.config
    v = cfg.vision
    spec = connector(cfg.connector.type)
    n_out = spec.tokens(cfg)
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    b, s, _ = features.shape
    if s != v.num_patches + 1 or cls_attn.shape != (b, v.num_heads, v.num_patches):
      raise ValueError(
          f"Connector expects features [B, {v.num_patches + 1}, Dv] and cls_attn "
          f"[B, {v.num_heads}, {v.num_patches}] (vision config); got {features.shape} "
          f"and {cls_attn.shape}")
    features = nn.with_logical_constraint(features.astype(dtype), ACT_AXES)
    if cfg.connector.input_norm:
      features = layer_norm(INPUT_NORM_EPS, dtype=dtype, param_dtype=pdtype, name="input_norm",
                            axis_name="vit_embed")(features)
    ctx = BuildContext(cfg, features, jax.lax.stop_gradient(cls_attn), rng, dtype, pdtype)
    tokens = spec.build(ctx)
    out = MlpProjector(cfg.llm.hidden_size, two_layer=not spec.linear_projector, dtype=dtype,
                       param_dtype=pdtype, name="projector")(tokens)
    assert out.shape[1] == n_out, (spec.name, out.shape, n_out)
    return nn.with_logical_constraint(out, ACT_AXES)

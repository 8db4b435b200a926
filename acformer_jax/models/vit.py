"""CLIP-style vision transformer (spec ``docs/method.md`` 3.2, 2.8, 1.2), the ``clip`` tower.

The encoder block (:class:`VisionBlock`) is shared with the other towers
(``siglip.py``, ``dinov2.py``); this file registers the ``clip`` entry of the tower
registry (``towers.py``) at its end.

``VisionTransformer(config)(pixel_values [B,H,W,C]) -> (features [B,N+1,D], cls_attn [B,heads,N])``
where ``features`` equals HF ``hidden_states[select_layer]`` and ``cls_attn`` is the
post-softmax attention of the CLS query over the N patch tokens in that same block.
Only the first ``config.num_computed_layers`` blocks are run (under ``layers``); the
remaining checkpoint blocks live in ``unused_layers`` and ``post_layernorm`` is kept
for lossless round trips; both are created at init only and never computed.
"""
from __future__ import annotations

from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax.config import VisionConfig
from acformer_jax.keymap import CONV2D, LINEAR, KeyMap, LayerStack, Rule
from acformer_jax.models import towers
from acformer_jax.models.attention import attention as attend
from acformer_jax.models.layers import (DEFAULT_KERNEL_INIT, DType, constrain, dense,
                                        layer_norm, partitioned, stacked, to_dtype)

_ACT = ("activation_batch", "activation_length", "activation_embed")


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's activation: ``x * sigmoid(1.702 x)`` (docs/method.md 3.3)."""
  return x * jax.nn.sigmoid(1.702 * x)


# HF ``hidden_act`` names -> functions (the towers' MLP activations).
ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"vision.hidden_act={name!r} is not one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


# --- CLIPVisionModel keys (docs/method.md 3.2, 2.9) ----------------------------------------------
CLIP_VISION_RULES = (
    Rule("embeddings.patch_embedding.weight", "embeddings/patch_embedding/kernel", CONV2D),
    Rule("embeddings.class_embedding", "embeddings/class_embedding"),
    Rule("embeddings.position_embedding.weight", "embeddings/position_embedding"),
    Rule("pre_layrnorm.weight", "pre_layrnorm/scale"),
    Rule("pre_layrnorm.bias", "pre_layrnorm/bias"),
    Rule("post_layernorm.weight", "post_layernorm/scale"),
    Rule("post_layernorm.bias", "post_layernorm/bias"),
)
CLIP_VISION_LAYER_RULES = tuple(
    [Rule(f"encoder.layers.{{i}}.{ln}.{w}", f"{ln}/{o}")
     for ln in ("layer_norm1", "layer_norm2") for w, o in (("weight", "scale"), ("bias", "bias"))]
    + [Rule(f"encoder.layers.{{i}}.{mod}.weight", f"{mod.replace('.', '/')}/kernel", LINEAR)
       for mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.out_proj", "mlp.fc1", "mlp.fc2")]
    + [Rule(f"encoder.layers.{{i}}.{mod}.bias", f"{mod.replace('.', '/')}/bias")
       for mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.out_proj", "mlp.fc1", "mlp.fc2")])
CLIP_VISION_IGNORE = (r"embeddings\.position_ids",)


def clip_vision_keymap(num_layers: int, num_computed_layers: int) -> KeyMap:
  """CLIPVisionModel keys (transformers >= 5 spelling, no ``vision_model.`` prefix).

  HF blocks ``0..n-1`` go to ``layers``, the rest to ``unused_layers`` (docs/design.md).
  """
  n = num_computed_layers
  stacks = [LayerStack("layers", 0, n)]
  if num_layers > n:
    stacks.append(LayerStack("unused_layers", n, num_layers - n))
  return KeyMap.build(CLIP_VISION_RULES, CLIP_VISION_LAYER_RULES, stacks, CLIP_VISION_IGNORE)


def anchor_rows(q: jax.Array, k: jax.Array, anchor_row: str, num_prefix: int) -> jax.Array:
  """The anchor-ranking rows of the post-softmax attention of ``q, k [B,S,H,hd]`` over the
  patch keys, in float32.

  ``"cls"``: the CLS query's row (CLIP, DINOv2); ``"received"``: the attention each
  patch receives, averaged over all queries (CLS-less towers, docs/connectors.md).
  The first ``num_prefix`` keys (CLS, registers) are dropped: ``[B, H, N]``.
  """
  scale = q.shape[-1] ** -0.5
  if anchor_row == "cls":
    scores = jnp.einsum("bhd,bkhd->bhk", q[:, 0], k).astype(jnp.float32) * scale
    return jax.nn.softmax(scores, axis=-1)[:, :, num_prefix:]
  if anchor_row == "received":
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    return jnp.mean(jax.nn.softmax(scores, axis=-1)[:, :, :, num_prefix:], axis=2)
  raise ValueError(f"anchor_row={anchor_row!r}; expected 'cls' or 'received'")


def patch_embedding(cfg: VisionConfig, pixel_values: jax.Array, *, use_bias: bool, dtype,
                    param_dtype) -> jax.Array:
  """The towers' patch conv (kernel = stride = patch, submodule ``patch_embedding``) on
  ``[B,S,S,C]``, flattened row-major over the grid like HF's ``flatten(2)``: ``[B,N,D]``.
  Call from inside a compact method (the conv becomes the caller's submodule)."""
  p, d = cfg.patch_size, cfg.hidden_size
  x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=use_bias, dtype=dtype,
              param_dtype=param_dtype,
              kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("vit_patch", None, None, "vit_embed")),
              bias_init=partitioned(nn.initializers.zeros_init(), ("vit_embed",)),
              name="patch_embedding")(pixel_values.astype(dtype))
  return x.reshape(x.shape[0], -1, d)


def check_pixels(cfg: VisionConfig, pixel_values: jax.Array, who: str) -> None:
  """Raises unless ``pixel_values`` is ``[B, S, S, C]`` for ``cfg``."""
  s, c = cfg.image_size, cfg.num_channels
  if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (s, s, c):
    raise ValueError(f"{who} expects pixel_values [B,{s},{s},{c}] (NHWC), "
                     f"got shape {tuple(pixel_values.shape)}")


class VisionEmbeddings(nn.Module):
  """Patch conv (no bias) + class embedding + learned absolute positions."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    cfg, dt, pdt = self.config, to_dtype(self.dtype), to_dtype(self.param_dtype)
    d = cfg.hidden_size
    patches = patch_embedding(cfg, pixel_values, use_bias=False, dtype=dt, param_dtype=pdt)
    b = patches.shape[0]
    cls = self.param("class_embedding", partitioned(DEFAULT_KERNEL_INIT, ("vit_embed",)), (d,), pdt)
    pos = self.param("position_embedding", partitioned(DEFAULT_KERNEL_INIT, ("vit_pos", "vit_embed")),
                     (cfg.num_patches + 1, d), pdt)
    cls = jnp.broadcast_to(cls.astype(dt), (b, 1, d))
    return jnp.concatenate([cls, patches], axis=1) + pos.astype(dt)[None]


class VisionAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections; also returns the
  float32 anchor rows over the patch tokens ``[B, heads, N]`` (:func:`anchor_rows`)."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"
  anchor_row: str = "cls"
  num_prefix: int = 1

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
    # The anchor-ranking rows, recomputed apart from the kernel, which never materialises
    # the probabilities.
    return out, anchor_rows(q, k, self.anchor_row, self.num_prefix)


class VisionMLP(nn.Module):
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    y = activation(cfg.hidden_act or "quick_gelu")(dense(cfg.intermediate_size, ("vit_embed", "vit_mlp"), name="fc1", **kw)(x))
    y = constrain(y, ("activation_batch", "activation_length", "activation_mlp"))
    return dense(cfg.hidden_size, ("vit_mlp", "vit_embed"), name="fc2", **kw)(y)


class VisionBlock(nn.Module):
  """Pre-LN encoder block; scan body ``x -> (x, anchor rows)``.

  ``layerscale`` multiplies each branch by a learned per-channel scale before the
  residual add (DINOv2's ``layer_scale1/2``); ``anchor_row`` / ``num_prefix``: see
  :func:`anchor_rows`.
  """
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"
  layerscale: bool = False
  anchor_row: str = "cls"
  num_prefix: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def scaled(y, name):
      if not self.layerscale:
        return y
      g = self.param(name, partitioned(nn.initializers.ones_init(), ("norm",)),
                     (cfg.hidden_size,), to_dtype(self.param_dtype))
      return y * g.astype(y.dtype)

    attn, cls_attn = VisionAttention(cfg, name="self_attn", attention=self.attention,
                                     anchor_row=self.anchor_row,
                                     num_prefix=self.num_prefix, **kw)(
        layer_norm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x))
    x = x + scaled(attn, "layer_scale1")
    x = x + scaled(VisionMLP(cfg, name="mlp", **kw)(
        layer_norm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)), "layer_scale2")
    return constrain(x, _ACT), cls_attn


class TowerModule(nn.Module):
  """The fields every tower module takes (``towers.build``: ``layers.tower_options``).

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


class VisionTransformer(TowerModule):
  """CLIP vision tower truncated at ``config.select_layer`` (docs/method.md 2.8)."""

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = self.config
    check_pixels(cfg, pixel_values, "VisionTransformer")
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


def scan_blocks(cfg: VisionConfig, blocks, x: jax.Array, **block_kw):
  """Every block of the stacked per-block params ``blocks`` (leading axis: block) on ``x``,
  float32, for the analysis: ``(hidden [L+1,B,T,D]`` (index 0 = ``x``), ``rows [L,B,H,N])``.
  ``block_kw``: :class:`VisionBlock` options (``layerscale``, ``anchor_row``, ...)."""
  def body(h, p):
    h, rows = VisionBlock(cfg, **block_kw).apply({"params": p}, h)
    return h, (h, rows)

  _, (hidden, rows) = jax.lax.scan(body, x, blocks)
  return jnp.concatenate([x[None], hidden], axis=0), rows


def clip_all_layers(cfg: VisionConfig, params, blocks, images):
  """The ``Tower.all_layers`` of CLIP: embeddings + ``pre_layrnorm``, then every block."""
  x = VisionEmbeddings(cfg).apply({"params": params["embeddings"]}, images)
  x = layer_norm(cfg.layer_norm_eps, dtype="float32", param_dtype="float32").apply(
      {"params": params["pre_layrnorm"]}, x)
  hidden, rows = scan_blocks(cfg, blocks, x)
  return hidden, rows, {}


# --- the "clip" tower entry -------------------------------------------------------------
def _require(d: Mapping, key: str, where: str):
  if key not in d:
    raise ValueError(f"{where}: config.json has no field {key!r}")
  return d[key]


def clip_config_from_hf(d: Mapping[str, Any], select_layer: int = -2) -> VisionConfig:
  """VisionConfig from a CLIP vision (or full CLIP) ``config.json`` dict."""
  if d.get("model_type") == "clip" or "vision_config" in d:
    d = d.get("vision_config") or {}
  act = d.get("hidden_act", "quick_gelu")
  if act not in ("quick_gelu", "gelu"):
    raise ValueError(f"CLIP vision config: hidden_act={act!r}, only 'quick_gelu' and 'gelu' "
                     "are supported")
  w = "CLIP vision config"
  cfg = VisionConfig(
      tower="clip", image_size=int(_require(d, "image_size", w)),
      patch_size=int(_require(d, "patch_size", w)),
      num_channels=int(d.get("num_channels", 3)), hidden_size=int(_require(d, "hidden_size", w)),
      intermediate_size=int(_require(d, "intermediate_size", w)),
      num_layers=int(_require(d, "num_hidden_layers", w)),
      num_heads=int(_require(d, "num_attention_heads", w)),
      layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)), select_layer=select_layer,
      hidden_act="" if act == "quick_gelu" else act)
  _ = cfg.num_computed_layers  # raises early on a bad select_layer
  return cfg


def clip_config_to_hf(vc: VisionConfig) -> dict:
  return {"model_type": "clip_vision_model", "hidden_size": vc.hidden_size,
          "intermediate_size": vc.intermediate_size, "num_hidden_layers": vc.num_layers,
          "num_attention_heads": vc.num_heads, "image_size": vc.image_size,
          "patch_size": vc.patch_size, "num_channels": vc.num_channels,
          "layer_norm_eps": vc.layer_norm_eps, "hidden_act": vc.hidden_act or "quick_gelu"}


def clip_prefix(keys) -> str:
  """``""`` for transformers >= 5 CLIPVisionModel files, ``"vision_model."`` for older
  CLIPVisionModel files and full CLIPModel files."""
  return "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""


def vit_flops(vc: VisionConfig, tokens: int, layers: int) -> float:
  """Patch embedding + ``layers`` blocks on ``tokens`` tokens, per image."""
  patch = 2.0 * vc.num_patches * vc.patch_size ** 2 * vc.num_channels * vc.hidden_size
  return patch + layers * towers.transformer_block_flops(tokens, vc.hidden_size,
                                                         vc.intermediate_size)


def _clip_validate(vc: VisionConfig):
  out = []
  if vc.hidden_act not in ("", "quick_gelu", "gelu"):
    out.append(f"model.vision.hidden_act={vc.hidden_act!r}: clip supports quick_gelu or gelu")
  if vc.use_head or vc.num_register_tokens or vc.position_grid:
    out.append("model.vision: use_head / num_register_tokens / position_grid do not apply to "
               "the clip tower")
  return out


CLIP = towers.register_tower(towers.Tower(
    name="clip", module=VisionTransformer, hf_model_types=("clip_vision_model", "clip"),
    from_hf_config=clip_config_from_hf, to_hf_config=clip_config_to_hf,
    keymap=lambda vc: clip_vision_keymap(vc.num_layers, vc.num_computed_layers),
    hf_prefix=clip_prefix,
    flops=lambda vc: vit_flops(vc, vc.num_patches + 1, vc.num_computed_layers),
    image_mean=towers.CLIP_MEAN, image_std=towers.CLIP_STD,
    anchor_source="the CLS query's attention over the patches, per head, in the selected layer",
    validate=_clip_validate, hf_architecture="CLIPVisionModel", all_layers=clip_all_layers,
    hf_extras=(r"text_model\..*", r"visual_projection\.weight", r"text_projection\.weight",
               r"logit_scale")))

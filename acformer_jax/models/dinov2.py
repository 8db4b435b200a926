"""DINOv2 vision tower (transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``), the
``dinov2`` entry of the tower registry.

Differences from CLIP: patch conv with bias, no pre-LayerNorm, LayerScale on both
residual branches, exact GELU, LayerNorm eps 1e-6, optional register tokens after CLS,
and position embeddings stored on the pre-training grid (``position_grid``, 37 for
518 px) and resized bicubically to the input grid, as torch ``F.interpolate`` does
(``antialias=True`` for the register variant, as transformers does). The resize is a
constant matrix product, computed at trace time.

``Dinov2Tower(config)(pixel_values) -> (features [B,N+1,D], cls_attn [B,H,N])``:
``features`` is HF ``hidden_states[select_layer]`` with the register tokens removed; the
anchor source is the CLS query's attention over the N patches (registers excluded).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax.config import VisionConfig
from acformer_jax.keymap import CONV2D, KeyMap, LINEAR, LayerStack, Rule
from acformer_jax.models import towers
from acformer_jax.models.layers import (DEFAULT_KERNEL_INIT, DType, constrain, layer_norm,
                                        partitioned, stacked, to_dtype)
from acformer_jax.models.vit import (TowerModule, VisionBlock, check_pixels, patch_embedding,
                                     scan_blocks, vit_flops)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((x - 5) * x + 8) * x * a - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
  """``[n_out, n_in]`` weights of torch's 1-D bicubic resize (``align_corners=False``).

  Without antialias: Keys cubic with a=-0.75 at ``(i + 0.5) * n_in / n_out - 0.5``, border
  taps clamped. With antialias (torch's ``_upsample_bicubic2d_aa``, PIL's rule): a=-0.5,
  the kernel widened by the scale when shrinking, taps cut at the border and renormalised.
  """
  scale = n_in / n_out
  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    if not antialias:
      src = (i + 0.5) * scale - 0.5
      x0 = math.floor(src)
      t = src - x0
      for k in range(-1, 3):
        w[i, min(max(x0 + k, 0), n_in - 1)] += _cubic(np.float64(t - k), -0.75)
    else:
      support = 2.0 * scale if scale >= 1.0 else 2.0
      inv = 1.0 / scale if scale >= 1.0 else 1.0
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)
      hi = min(int(center + support + 0.5), n_in)
      taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
      total = taps.sum()
      w[i, lo:hi] = taps / total if total != 0 else taps
  return w


def resize_positions(pos: jax.Array, grid_in: int, grid_out: int, antialias: bool) -> jax.Array:
  """``[grid_in^2, D]`` row-major grid -> ``[grid_out^2, D]`` (float32, torch bicubic)."""
  if grid_in == grid_out:
    return pos
  m = jnp.asarray(bicubic_matrix(grid_in, grid_out, antialias), jnp.float32)
  g = pos.astype(jnp.float32).reshape(grid_in, grid_in, -1)
  g = jnp.einsum("ih,jw,hwd->ijd", m, m, g, precision=jax.lax.Precision.HIGHEST)
  return g.reshape(grid_out * grid_out, -1).astype(pos.dtype)


def position_grid(cfg: VisionConfig) -> int:
  return cfg.position_grid or cfg.grid_size


class Dinov2Embeddings(nn.Module):
  """Patch conv + CLS (+ registers) + interpolated positions: ``[B, 1+R+N, D]``."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    cfg, dt, pdt = self.config, to_dtype(self.dtype), to_dtype(self.param_dtype)
    d, r = cfg.hidden_size, cfg.num_register_tokens
    x = patch_embedding(cfg, pixel_values, use_bias=True, dtype=dt, param_dtype=pdt)
    b = x.shape[0]
    emb = lambda name, shape, axes: self.param(  # pylint: disable=g-long-lambda
        name, partitioned(DEFAULT_KERNEL_INIT, axes), shape, pdt)
    cls = emb("cls_token", (1, 1, d), (None, None, "vit_embed"))
    emb("mask_token", (1, d), (None, "vit_embed"))  # kept for round trips, never used
    g = position_grid(cfg)
    pos = emb("position_embeddings", (1, 1 + g * g, d), (None, "vit_pos", "vit_embed"))[0]
    patch_pos = resize_positions(pos[1:], g, cfg.grid_size, antialias=r > 0)
    x = x + patch_pos.astype(dt)[None]
    parts = [jnp.broadcast_to((cls[0] + pos[:1]).astype(dt), (b, 1, d))]
    if r:
      regs = emb("register_tokens", (1, r, d), (None, None, "vit_embed"))
      parts.append(jnp.broadcast_to(regs.astype(dt), (b, r, d)))
    return jnp.concatenate(parts + [x], axis=1)


class Dinov2Tower(TowerModule):
  """DINOv2 truncated at ``config.select_layer`` (see the module docstring)."""

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = dataclasses.replace(self.config, hidden_act=self.config.hidden_act or "gelu")
    check_pixels(cfg, pixel_values, "Dinov2Tower")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    r = cfg.num_register_tokens
    blk = dict(layerscale=True, anchor_row="cls", num_prefix=1 + r, attention=self.attention)
    x = Dinov2Embeddings(cfg, name="embeddings", **kw)(pixel_values)
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    n = cfg.num_computed_layers
    run = stacked(VisionBlock, length=n, scan_layers=self.scan_layers,
                  remat=self.remat_policy, in_axes=())
    features, cls_attn = run(cfg, name="layers", **blk, **kw)(x)
    if self.is_initializing():  # kept for round trips, never computed
      if cfg.num_layers > n:
        rest = stacked(VisionBlock, length=cfg.num_layers - n, scan_layers=True, remat="none",
                       in_axes=())
        rest(cfg, name="unused_layers", **blk, **kw)(features)
      layer_norm(cfg.layer_norm_eps, name="layernorm", **kw)(features[:, 0])
    if r:
      features = jnp.concatenate([features[:, :1], features[:, 1 + r:]], axis=1)
    return features, cls_attn[-1]


def dinov2_all_layers(cfg: VisionConfig, params, blocks, images):
  """``Tower.all_layers``: every block's CLS attention over the patches; hidden states
  without the register tokens (as ``features``)."""
  cfg = dataclasses.replace(cfg, hidden_act=cfg.hidden_act or "gelu")
  r = cfg.num_register_tokens
  x = Dinov2Embeddings(cfg).apply({"params": params["embeddings"]}, images)
  hidden, rows = scan_blocks(cfg, blocks, x, layerscale=True, num_prefix=1 + r)
  if r:
    hidden = jnp.concatenate([hidden[:, :, :1], hidden[:, :, 1 + r:]], axis=2)
  return hidden, rows, {}


# --- the "dinov2" tower entry -----------------------------------------------------------
def dinov2_config_from_hf(d: Mapping[str, Any], select_layer: int = -2) -> VisionConfig:
  """VisionConfig from a ``Dinov2Model`` / ``Dinov2WithRegistersModel`` ``config.json``.

  ``image_size`` starts as the pre-training size (the stored position grid); set
  ``vision.image_size`` lower or higher to run at another multiple of the patch.
  """
  w = f"DINOv2 config ({d.get('model_type')})"
  if d.get("use_swiglu_ffn"):
    raise ValueError(f"{w}: use_swiglu_ffn=true (ViT-g) is not supported")
  if not d.get("qkv_bias", True):
    raise ValueError(f"{w}: qkv_bias=false is not supported")
  act = d.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"{w}: hidden_act={act!r}, only 'gelu' is supported")
  missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
             if k not in d]
  if missing:
    raise ValueError(f"{w}: config.json has no field(s) {missing}")
  size, patch = int(d.get("image_size", 518)), int(d.get("patch_size", 14))
  hidden = int(d["hidden_size"])
  cfg = VisionConfig(
      tower="dinov2", image_size=size, patch_size=patch, num_channels=int(d.get("num_channels", 3)),
      hidden_size=hidden, intermediate_size=int(hidden * float(d.get("mlp_ratio", 4))),
      num_layers=int(d["num_hidden_layers"]), num_heads=int(d["num_attention_heads"]),
      layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)), select_layer=select_layer,
      hidden_act="gelu", position_grid=size // patch,
      num_register_tokens=int(d.get("num_register_tokens", 0)))
  _ = cfg.num_computed_layers
  return cfg


def _ratio(a: int, b: int):
  return a // b if a % b == 0 else a / b


def dinov2_config_to_hf(vc: VisionConfig) -> dict:
  d = {"model_type": "dinov2_with_registers" if vc.num_register_tokens else "dinov2",
       "hidden_size": vc.hidden_size, "mlp_ratio": _ratio(vc.intermediate_size, vc.hidden_size),
       "num_hidden_layers": vc.num_layers, "num_attention_heads": vc.num_heads,
       "image_size": position_grid(vc) * vc.patch_size, "patch_size": vc.patch_size,
       "num_channels": vc.num_channels, "layer_norm_eps": vc.layer_norm_eps,
       "hidden_act": "gelu", "qkv_bias": True, "use_swiglu_ffn": False}
  if vc.num_register_tokens:
    d["num_register_tokens"] = vc.num_register_tokens
  return d


def _pair(hf: str, ours: str, kind: str = "linear"):
  if kind == "norm":
    return [Rule(f"{hf}.weight", f"{ours}/scale"), Rule(f"{hf}.bias", f"{ours}/bias")]
  return [Rule(f"{hf}.weight", f"{ours}/kernel", LINEAR), Rule(f"{hf}.bias", f"{ours}/bias")]


DINOV2_LAYER_RULES = tuple(
    _pair("encoder.layer.{i}.norm1", "layer_norm1", "norm")
    + _pair("encoder.layer.{i}.norm2", "layer_norm2", "norm")
    + _pair("encoder.layer.{i}.attention.attention.query", "self_attn/q_proj")
    + _pair("encoder.layer.{i}.attention.attention.key", "self_attn/k_proj")
    + _pair("encoder.layer.{i}.attention.attention.value", "self_attn/v_proj")
    + _pair("encoder.layer.{i}.attention.output.dense", "self_attn/out_proj")
    + _pair("encoder.layer.{i}.mlp.fc1", "mlp/fc1") + _pair("encoder.layer.{i}.mlp.fc2", "mlp/fc2")
    + [Rule("encoder.layer.{i}.layer_scale1.lambda1", "layer_scale1"),
       Rule("encoder.layer.{i}.layer_scale2.lambda1", "layer_scale2")])


def dinov2_keymap(vc: VisionConfig) -> KeyMap:
  rules = [Rule("embeddings.cls_token", "embeddings/cls_token"),
           Rule("embeddings.mask_token", "embeddings/mask_token"),
           Rule("embeddings.position_embeddings", "embeddings/position_embeddings"),
           Rule("embeddings.patch_embeddings.projection.weight",
                "embeddings/patch_embedding/kernel", CONV2D),
           Rule("embeddings.patch_embeddings.projection.bias", "embeddings/patch_embedding/bias"),
           *_pair("layernorm", "layernorm", "norm")]
  if vc.num_register_tokens:
    rules.append(Rule("embeddings.register_tokens", "embeddings/register_tokens"))
  n = vc.num_computed_layers
  stacks = [LayerStack("layers", 0, n)]
  if vc.num_layers > n:
    stacks.append(LayerStack("unused_layers", n, vc.num_layers - n))
  return KeyMap.build(rules, DINOV2_LAYER_RULES, stacks)


def _validate(vc: VisionConfig):
  out = []
  if vc.hidden_act not in ("", "gelu"):
    out.append(f"model.vision.hidden_act={vc.hidden_act!r}: dinov2 uses exact gelu")
  if vc.use_head or vc.anchor_source != "auto":
    out.append("model.vision: use_head / anchor_source do not apply to dinov2 (CLS attention)")
  return out


DINOV2 = towers.register_tower(towers.Tower(
    name="dinov2", module=Dinov2Tower, hf_model_types=("dinov2", "dinov2_with_registers"),
    from_hf_config=dinov2_config_from_hf, to_hf_config=dinov2_config_to_hf,
    keymap=dinov2_keymap,
    hf_prefix=lambda keys: towers.first_prefix(
        keys, "embeddings.patch_embeddings.projection.weight", ("dinov2.", "backbone.", "")),
    flops=lambda vc: vit_flops(vc, vc.num_patches + 1 + vc.num_register_tokens,
                               vc.num_computed_layers),
    image_mean=towers.IMAGENET_MEAN, image_std=towers.IMAGENET_STD,
    anchor_source="the CLS query's attention over the patches (registers excluded), per head",
    validate=_validate, hf_architecture="Dinov2Model", all_layers=dinov2_all_layers,
    hf_features=lambda vc, h: h[:, [0] + list(range(1 + vc.num_register_tokens, h.shape[1]))]))

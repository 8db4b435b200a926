"""SigLIP / SigLIP 2 vision tower (transformers ``SiglipVisionModel``), the ``siglip`` and
``siglip2`` entries of the tower registry.

SigLIP has no CLS token and no pre-LayerNorm; its blocks are CLIP's with a tanh GELU.
``SiglipVisionTower(config)(pixel_values [B,S,S,C]) -> (features [B,N+1,D], anchor [B,H,N])``
where ``features[:, 1:]`` is HF ``hidden_states[select_layer]`` and ``features[:, 0]`` is
their mean (the summary token the connectors use in CLS's place). The anchor source
(docs/connectors.md, "Anchors without a CLS token"):

* ``probe`` (default when the checkpoint has the attention-pooling head): the head's
  probe attention over the N patches, per head. It runs every block, the final
  LayerNorm and the head's attention, as ``SiglipVisionModel`` does for ``pooler_output``.
* ``received``: the attention each patch receives, averaged over all N queries, per head,
  in the selected block.

SigLIP 2's fixed-resolution checkpoints (patch 14/16, 224-512 px) have this architecture
and ``model_type: siglip``; the NaFlex variant (``Siglip2VisionModel``) is not supported.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax.config import VisionConfig
from acformer_jax.keymap import CONV2D, IDENTITY, KeyMap, LINEAR, LayerStack, Rule
from acformer_jax.models import towers
from acformer_jax.models.layers import (DEFAULT_KERNEL_INIT, DType, constrain, dense, layer_norm,
                                        partitioned, stacked, to_dtype)
from acformer_jax.models.vit import (CLIP_VISION_LAYER_RULES, TowerModule, VisionBlock,
                                     VisionMLP, check_pixels, patch_embedding, scan_blocks,
                                     vit_flops)

ACT = "gelu_pytorch_tanh"
ANCHOR_SOURCES = ("auto", "probe", "received")


def resolved(cfg: VisionConfig) -> VisionConfig:
  return dataclasses.replace(cfg, hidden_act=cfg.hidden_act or ACT)


def uses_probe(cfg: VisionConfig) -> bool:
  """Whether the anchor source is the pooling head's probe attention."""
  return cfg.anchor_source == "probe" or (cfg.anchor_source == "auto" and cfg.use_head)


class SiglipEmbeddings(nn.Module):
  """Patch conv (with bias) + learned absolute positions; no CLS."""
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    cfg, dt, pdt = self.config, to_dtype(self.dtype), to_dtype(self.param_dtype)
    d = cfg.hidden_size
    x = patch_embedding(cfg, pixel_values, use_bias=True, dtype=dt, param_dtype=pdt)
    pos = self.param("position_embedding", partitioned(DEFAULT_KERNEL_INIT, ("vit_pos", "vit_embed")),
                     (cfg.num_patches, d), pdt)
    return x + pos.astype(dt)[None]


class AttentionPoolHead(nn.Module):
  """SigLIP's multi-head attention pooling (a learned probe attends to all tokens).

  Returns ``(pooled [B, D], probe attention [B, heads, N] float32)``; the fused q/k/v
  projection keeps torch ``nn.MultiheadAttention``'s ``in_proj`` layout.
  """
  config: VisionConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = self.config
    d, h = cfg.hidden_size, cfg.num_heads
    hd = d // h
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    probe = self.param("probe", partitioned(DEFAULT_KERNEL_INIT, (None, None, "vit_embed")),
                       (1, 1, d), to_dtype(self.param_dtype))
    b, n, _ = x.shape
    qkv = nn.Dense(3 * d, use_bias=True, dtype=to_dtype(self.dtype),
                   param_dtype=to_dtype(self.param_dtype),
                   kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("vit_embed", "vit_heads")),
                   bias_init=partitioned(nn.initializers.zeros_init(), ("vit_heads",)),
                   name="in_proj")
    q = qkv(jnp.broadcast_to(probe.astype(x.dtype), (b, 1, d)))[..., :d].reshape(b, 1, h, hd)
    kv = qkv(x)
    k, v = kv[..., d:2 * d].reshape(b, n, h, hd), kv[..., 2 * d:].reshape(b, n, h, hd)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(x.dtype), v).reshape(b, 1, d)
    out = dense(d, ("vit_heads", "vit_embed"), use_bias=True, name="out_proj", **kw)(out)
    y = layer_norm(cfg.layer_norm_eps, name="layernorm", **kw)(out)
    out = out + VisionMLP(cfg, name="mlp", **kw)(y)
    return out[:, 0], probs[:, :, 0]


class SiglipVisionTower(TowerModule):
  """SigLIP vision tower truncated at ``config.select_layer`` (see the module docstring)."""

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> Tuple[jax.Array, jax.Array]:
    cfg = resolved(self.config)
    check_pixels(cfg, pixel_values, "SiglipVisionTower")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blk = dict(anchor_row="received", num_prefix=0, attention=self.attention)
    act = ("activation_batch", "activation_length", "activation_embed")
    x = constrain(SiglipEmbeddings(cfg, name="embeddings", **kw)(pixel_values), act)
    n = cfg.num_computed_layers
    run = stacked(VisionBlock, length=n, scan_layers=self.scan_layers,
                  remat=self.remat_policy, in_axes=())
    features, received = run(cfg, name="layers", **blk, **kw)(x)
    anchor = received[-1]
    probe = uses_probe(cfg)
    if probe or self.is_initializing():
      last = features
      if cfg.num_layers > n:
        rest = stacked(VisionBlock, length=cfg.num_layers - n, scan_layers=self.scan_layers,
                       remat="none", in_axes=())
        last, _ = rest(cfg, name="unused_layers", **blk, **kw)(features)
      last = layer_norm(cfg.layer_norm_eps, name="post_layernorm", **kw)(last)
      if cfg.use_head:
        _, probe_attn = AttentionPoolHead(cfg, name="head", **kw)(last)
        if probe:
          anchor = probe_attn
    summary = jnp.mean(features, axis=1, keepdims=True)
    return jnp.concatenate([summary, features], axis=1), anchor


def siglip_all_layers(cfg: VisionConfig, params, blocks, images):
  """``Tower.all_layers``: every block's received attention, and (with the head) the probe
  attention after the last block and ``post_layernorm``; hidden states with their mean
  prepended (as ``features``)."""
  cfg = resolved(cfg)
  x = SiglipEmbeddings(cfg).apply({"params": params["embeddings"]}, images)
  hidden, rows = scan_blocks(cfg, blocks, x, anchor_row="received", num_prefix=0)
  extras = {}
  if cfg.use_head:
    norm = layer_norm(cfg.layer_norm_eps, dtype="float32", param_dtype="float32")
    last = norm.apply({"params": params["post_layernorm"]}, hidden[-1])
    _, extras["probe"] = AttentionPoolHead(cfg).apply({"params": params["head"]}, last)
  return jnp.concatenate([jnp.mean(hidden, axis=2, keepdims=True), hidden], axis=2), rows, extras


# --- the "siglip" / "siglip2" tower entries ---------------------------------------------
def _concat_mean(h):
  """HF hidden states ``[B,N,D]`` (numpy or torch) -> ours: their mean prepended."""
  if isinstance(h, np.ndarray):
    return np.concatenate([h.mean(1, keepdims=True), h], 1)
  import torch  # pylint: disable=import-outside-toplevel
  return torch.cat([h.mean(1, keepdim=True), h], 1)


def siglip_config_from_hf(d: Mapping[str, Any], select_layer: int = -2) -> VisionConfig:
  """VisionConfig from a ``SiglipVisionModel`` (or full ``SiglipModel``) ``config.json``."""
  if d.get("model_type") == "siglip" or "vision_config" in d:
    d = d.get("vision_config") or {}
  w = "SigLIP vision config"
  act = d.get("hidden_act", ACT)
  if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu"):
    raise ValueError(f"{w}: hidden_act={act!r} is not supported")
  missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads", "image_size", "patch_size") if k not in d]
  if missing:
    raise ValueError(f"{w}: config.json has no field(s) {missing}")
  cfg = VisionConfig(
      tower="siglip", image_size=int(d["image_size"]), patch_size=int(d["patch_size"]),
      num_channels=int(d.get("num_channels", 3)), hidden_size=int(d["hidden_size"]),
      intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
      num_heads=int(d["num_attention_heads"]), layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)),
      select_layer=select_layer, hidden_act=act, use_head=bool(d.get("vision_use_head", True)))
  _ = cfg.num_computed_layers
  return cfg


def siglip_config_to_hf(vc: VisionConfig) -> dict:
  return {"model_type": "siglip_vision_model", "hidden_size": vc.hidden_size,
          "intermediate_size": vc.intermediate_size, "num_hidden_layers": vc.num_layers,
          "num_attention_heads": vc.num_heads, "image_size": vc.image_size,
          "patch_size": vc.patch_size, "num_channels": vc.num_channels,
          "layer_norm_eps": vc.layer_norm_eps, "hidden_act": vc.hidden_act or ACT,
          "vision_use_head": vc.use_head}


def _linear(hf: str, ours: str):
  return [Rule(f"{hf}.weight", f"{ours}/kernel", LINEAR), Rule(f"{hf}.bias", f"{ours}/bias")]


def _norm(hf: str, ours: str):
  return [Rule(f"{hf}.weight", f"{ours}/scale"), Rule(f"{hf}.bias", f"{ours}/bias")]


def siglip_keymap(vc: VisionConfig) -> KeyMap:
  rules = [Rule("embeddings.patch_embedding.weight", "embeddings/patch_embedding/kernel", CONV2D),
           Rule("embeddings.patch_embedding.bias", "embeddings/patch_embedding/bias"),
           Rule("embeddings.position_embedding.weight", "embeddings/position_embedding"),
           *_norm("post_layernorm", "post_layernorm")]
  if vc.use_head:
    rules += [Rule("head.probe", "head/probe", IDENTITY),
              Rule("head.attention.in_proj_weight", "head/in_proj/kernel", LINEAR),
              Rule("head.attention.in_proj_bias", "head/in_proj/bias"),
              *_linear("head.attention.out_proj", "head/out_proj"),
              *_norm("head.layernorm", "head/layernorm"),
              *_linear("head.mlp.fc1", "head/mlp/fc1"), *_linear("head.mlp.fc2", "head/mlp/fc2")]
  n = vc.num_computed_layers
  stacks = [LayerStack("layers", 0, n)]
  if vc.num_layers > n:
    stacks.append(LayerStack("unused_layers", n, vc.num_layers - n))
  return KeyMap.build(rules, CLIP_VISION_LAYER_RULES, stacks,
                              (r"embeddings\.position_ids",))


def siglip_flops(vc: VisionConfig) -> float:
  n, d = vc.num_patches, vc.hidden_size
  if not uses_probe(vc):
    return vit_flops(vc, n, vc.num_computed_layers)
  head = 2.0 * (2 * d * d + 2 * n * 2 * d * d) + 4.0 * n * d + 4.0 * d * vc.intermediate_size
  return vit_flops(vc, n, vc.num_layers) + head


def _validate(vc: VisionConfig):
  out = []
  if vc.anchor_source not in ANCHOR_SOURCES:
    out.append(f"model.vision.anchor_source={vc.anchor_source!r} is not one of {ANCHOR_SOURCES}")
  elif vc.anchor_source == "probe" and not vc.use_head:
    out.append("model.vision.anchor_source='probe' needs use_head=True (the pooling head)")
  if vc.num_register_tokens or vc.position_grid:
    out.append("model.vision: num_register_tokens / position_grid do not apply to siglip")
  return out


_ENTRY = dict(
    module=SiglipVisionTower, from_hf_config=siglip_config_from_hf,
    to_hf_config=siglip_config_to_hf, keymap=siglip_keymap,
    hf_prefix=lambda keys: towers.first_prefix(keys, "embeddings.patch_embedding.weight",
                                               ("vision_model.", "")),
    flops=siglip_flops, image_mean=towers.HALF, image_std=towers.HALF,
    anchor_source=("the pooling head's probe attention per head (use_head), else the mean "
                   "attention each patch receives in the selected layer"),
    has_cls=False, validate=_validate, hf_architecture="SiglipVisionModel",
    all_layers=siglip_all_layers, layer_rows="received",
    anchor_used=lambda vc: "probe" if uses_probe(vc) else "received",
    hf_features=lambda vc, h: _concat_mean(h),
    hf_extras=(r"text_model\..*", r"logit_scale", r"logit_bias"))
SIGLIP = towers.register_tower(towers.Tower(
    name="siglip", hf_model_types=("siglip_vision_model", "siglip"), **_ENTRY))
SIGLIP2 = towers.register_tower(towers.Tower(name="siglip2", hf_model_types=(), **_ENTRY))

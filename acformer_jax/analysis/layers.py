"""All ViT layers in one pass: hidden states and CLS attention per block.

``VisionTransformer`` returns one selected layer (docs/design.md); the analysis needs every
layer, so this runs the same modules (``VisionEmbeddings``, ``pre_layrnorm``,
``VisionBlock``) block by block over the stacked parameters ``layers`` + ``unused_layers``
in one ``lax.scan``. Output ``i`` equals HF ``hidden_states[i]`` / ``attentions[i-1]``
(spec ``docs/method.md`` 1.2, 2.8).
"""
from __future__ import annotations

import functools
from typing import Mapping, Tuple

import jax
import jax.numpy as jnp

from acformer_jax.config import VisionConfig
from acformer_jax.models.layers import layer_norm
from acformer_jax.models.vit import VisionBlock, VisionEmbeddings


def stacked_blocks(params: Mapping, num_layers: int) -> dict:
  """Per-block parameters of all ``num_layers`` blocks, stacked on a leading axis.

  Raises:
    ValueError: when the tree lacks ``layers`` or holds a different number of blocks.
  """
  if "layers" not in params:
    raise ValueError(f"vision params have no 'layers' subtree (keys: {sorted(params)}); "
                     "expected a VisionTransformer parameter tree (docs/design.md)")
  parts = [params["layers"]] + ([params["unused_layers"]] if "unused_layers" in params else [])
  blocks = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
  have = jax.tree.leaves(blocks)[0].shape[0]
  if have != num_layers:
    raise ValueError(f"vision params hold {have} blocks (layers + unused_layers) but the "
                     f"vision config says num_layers={num_layers}")
  return blocks


@functools.partial(jax.jit, static_argnums=0)
def _run(cfg: VisionConfig, params, blocks, images):
  kw = dict(dtype="float32", param_dtype="float32")
  x = VisionEmbeddings(cfg, **kw).apply({"params": params["embeddings"]}, images)
  x = layer_norm(cfg.layer_norm_eps, **kw).apply({"params": params["pre_layrnorm"]}, x)

  def body(h, p):
    h, cls_attn = VisionBlock(cfg, **kw).apply({"params": p}, h)
    return h, (h, cls_attn)

  _, (hidden, cls_attn) = jax.lax.scan(body, x, blocks)
  return jnp.concatenate([x[None], hidden], axis=0), cls_attn


def all_layers(cfg: VisionConfig, params: Mapping, images) -> Tuple[jax.Array, jax.Array]:
  """Runs every ViT block on ``images``.

  Args:
    cfg: the vision config (``select_layer`` is irrelevant here).
    params: the unboxed ``VisionTransformer`` params (``vision/`` of the MLLM).
    images: float32 ``[B, S, S, 3]`` CLIP-normalised.

  Returns:
    ``hidden [L+1, B, N+1, D]`` (index 0 = embeddings after ``pre_layrnorm``, index ``i`` =
    output of block ``i``) and ``cls_attn [L, B, heads, N]`` (index ``i-1`` = block ``i``'s
    CLS row over the patches).
  """
  images = jnp.asarray(images, jnp.float32)
  s = cfg.image_size
  if images.ndim != 4 or images.shape[1:] != (s, s, cfg.num_channels):
    raise ValueError(f"images must be [B, {s}, {s}, {cfg.num_channels}]; got {images.shape}")
  return _run(cfg, params, stacked_blocks(params, cfg.num_layers), images)

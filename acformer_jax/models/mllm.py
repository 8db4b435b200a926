"""The assembled multimodal model: frozen ViT -> connector -> LLM decoder (``docs/method.md`` 1.1, 2.6).

Static shapes throughout: ``input_ids`` carry ``num_visual_tokens`` copies of
``config.image_token_id`` where the image goes (the HF-processor convention) and the
connector's tokens are scattered into those slots in order, which is what LLaVA's
sentinel splice produces after padding (docs/method.md 2.6). Rows without image tokens are
text-only: their image is encoded (the graph keeps one shape) but never used. The ViT
output is wrapped in ``stop_gradient``: the tower is frozen in both stages (docs/method.md 1.2).

Packed rows (``acformer_jax/batch.py``): ``images [B, M, S, S, 3]`` hold up to ``M`` images
per row; the ``B*M`` images are encoded as one batch and image slot ``m``'s tokens fill the
``m``-th group of ``Nv`` image-token slots of its row. Unused (padding) slots come after the
real ones, so their tokens are never read; ``image_mask`` zeroes them as well. With
``segment_ids`` the decoder attends causally inside each sample only (``LlamaModel``).

Parameters: ``vision/`` (the ``vision.tower`` module, ``models/towers.py``), ``connector/`` (``Connector``),
``llm/`` (the decoder of ``config.llm.family``, ``models/registry.py``); see docs/design.md.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax.models.connectors import Connector
from acformer_jax.models.layers import tower_options
from acformer_jax.models import registry
from acformer_jax.models.towers import tower


def default_positions(attention_mask: jax.Array) -> jax.Array:
  """RoPE positions ``0..len-1`` over the real tokens of each row (docs/method.md 2.6)."""
  mask = attention_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)


class MultimodalLM(nn.Module):
  """``MultimodalLM(config)``: ``apply({'params': p}, images, input_ids, ...) -> logits``.

  Methods for inference (``apply(..., method=...)``): :meth:`encode_images`,
  :meth:`embed`, :meth:`decode`.
  """
  config: config_lib.ModelConfig

  def setup(self):
    mc = self.config
    self.vision = tower(mc.vision.tower).module(mc.vision, **tower_options(mc))
    self.connector = Connector(mc)
    self.llm = registry.decoder(mc.llm, **tower_options(mc))

  def encode_images(self, images: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    """``images [B,S,S,3]`` (CLIP-normalised, NHWC) -> visual tokens ``[B, Nv, D_llm]``."""
    features, cls_attn = self.vision(images)
    features, cls_attn = jax.lax.stop_gradient((features, cls_attn))
    return self.connector(features, cls_attn, rng=rng)

  def embed(self, input_ids: jax.Array, visual: jax.Array) -> jax.Array:
    """Token embeddings with ``visual [B,Nv,D]`` scattered into the image slots.

    The k-th image-token slot of a row receives ``visual[b, k]``; a row must hold
    exactly ``Nv`` image tokens or none (not checked under ``jit``).
    """
    is_image = input_ids == self.config.image_token_id
    text = self.llm.embed(jnp.where(is_image, 0, input_ids))  # the image id may be >= vocab
    nv = visual.shape[1]
    slot = jnp.clip(jnp.cumsum(is_image, axis=1, dtype=jnp.int32) - 1, 0, nv - 1)
    placed = jnp.take_along_axis(visual, slot[..., None], axis=1).astype(text.dtype)
    return jnp.where(is_image[..., None], placed, text)

  def decode(self, embeds: jax.Array, positions: jax.Array, kv_mask: jax.Array,
             cache=None, cache_index=None, last_only: bool = False, segment_ids=None):
    """The decoder on embeddings: ``(logits [B,T,V] float32, new_cache)`` (``[B,1,V]`` with
    ``last_only``)."""
    return self.llm(embeds, positions, kv_mask, cache=cache, cache_index=cache_index,
                    last_only=last_only, segment_ids=segment_ids)

  def __call__(self, images: jax.Array, input_ids: jax.Array,
               attention_mask: Optional[jax.Array] = None,
               positions: Optional[jax.Array] = None,
               segment_ids: Optional[jax.Array] = None,
               image_mask: Optional[jax.Array] = None,
               rng: Optional[jax.Array] = None) -> jax.Array:
    """Teacher-forced logits ``[B, T, V]`` (float32).

    Args:
      images: float32 ``[B, M, S, S, 3]`` (or ``[B, S, S, 3]`` = one slot), CLIP-normalised.
      input_ids: int ``[B, T]`` with the image slots already expanded.
      attention_mask: ``[B, T]``, 1 = real token (default: ``segment_ids > 0``, else all real).
      positions: RoPE positions ``[B, T]`` (default: ``0..len-1`` over real tokens).
      segment_ids: int ``[B, T]`` of packed rows (0 = padding, 1..n = samples); attention
        never crosses a segment. None: one sample per row (inference).
      image_mask: bool ``[B, M]``, True = a real image in that slot (default: all real).
      rng: PRNG key for connectors that need one (``random_pr``).
    """
    if images.ndim == 4:
      images = images[:, None]
    if input_ids.ndim != 2 or images.ndim != 5 or images.shape[0] != input_ids.shape[0]:
      raise ValueError(f"MultimodalLM expects images [B,M,S,S,3] (or [B,S,S,3]) and input_ids "
                       f"[B,T] with the same B; got {images.shape} and {input_ids.shape}")
    b, m = images.shape[:2]
    if attention_mask is None:
      attention_mask = (jnp.ones(input_ids.shape, jnp.int32) if segment_ids is None
                        else (segment_ids > 0).astype(jnp.int32))
    if positions is None:
      positions = default_positions(attention_mask)
    visual = self.encode_images(images.reshape((b * m,) + images.shape[2:]), rng=rng)
    visual = visual.reshape(b, m, *visual.shape[1:])
    if image_mask is not None:  # padding slots: zeros (they are never placed anyway)
      visual = jnp.where(image_mask.astype(bool)[:, :, None, None], visual, 0)
    visual = visual.reshape(b, m * visual.shape[2], visual.shape[3])
    embeds = self.embed(input_ids, visual)
    logits, _ = self.decode(embeds, positions.astype(jnp.int32), attention_mask.astype(bool),
                            segment_ids=segment_ids)
    return logits

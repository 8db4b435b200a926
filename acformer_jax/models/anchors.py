"""Visual-anchor selection: the progressive per-head search (``docs/method.md`` 1.3).

The official code loops over the batch on the host and grows a top-(m+c) window of
each head's ranking until the head has contributed ``m`` new tokens. That equals,
head by head in order, "take this head's ``m`` best tokens among those not yet
chosen", which is one ``lax.top_k`` over the masked scores per head. Written as a
``lax.scan`` over heads, it is jittable with static shapes and needs no host trip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_anchor_tokens(num_heads: int, num_anchors: int) -> int:
  """Tokens ``select_anchors`` returns: CLS + ``heads * (num_anchors // heads)``."""
  return 1 + num_heads * (num_anchors // num_heads)


def select_anchors(cls_attn: jax.Array, num_anchors: int) -> jax.Array:
  """Selects the visual anchors from the CLS attention of each head (docs/method.md 1.3).

  Per head ``h`` in order, the ``m = num_anchors // heads`` highest-scoring patches
  of ``cls_attn[:, h]`` that earlier heads have not chosen are added to the set,
  which starts as ``{CLS}``. Ties go to the higher token index (the official
  ascending argsort read from its end).

  Args:
    cls_attn: float ``[batch, heads, num_patches]``, the CLS query's attention
      probabilities over the patch tokens (CLS->CLS excluded).
    num_anchors: the budget K (static); ``K // heads`` anchors per head.

  Returns:
    int32 ``[batch, 1 + heads * (K // heads)]``: positions in the full ViT
    sequence (0 = CLS, patch ``p`` -> ``p + 1``), sorted ascending, CLS first.
  """
  if cls_attn.ndim != 3:
    raise ValueError(f"cls_attn must be [batch, heads, num_patches]; got shape {cls_attn.shape}")
  _, heads, num_patches = cls_attn.shape
  per_head = num_anchors // heads
  if per_head < 1 or heads * per_head > num_patches:
    raise ValueError(
        f"num_anchors={num_anchors} with {heads} heads gives {per_head} anchors per head; "
        f"need 1 <= num_anchors // heads and heads * (num_anchors // heads) <= {num_patches}")
  batch = cls_attn.shape[0]
  scores = jnp.asarray(cls_attn, jnp.float32)
  # Reversed token order: lax.top_k prefers the lower position among equal values, so
  # on the reversed axis the higher original token index wins a tie.
  scores = jnp.flip(scores, axis=-1)  # [B, H, N]; reversed position r is patch N-1-r
  taken0 = jnp.zeros((batch, num_patches), jnp.bool_)

  def one_head(taken, head_scores):
    masked = jnp.where(taken, -jnp.inf, head_scores)
    _, picked = jax.lax.top_k(masked, per_head)            # [B, m] reversed positions
    taken = taken.at[jnp.arange(batch)[:, None], picked].set(True)
    return taken, None

  taken, _ = jax.lax.scan(one_head, taken0, jnp.moveaxis(scores, 1, 0))
  taken = jnp.flip(taken, axis=-1)                         # back to patch order
  # Sorted token positions of the chosen patches: top_k of -position keeps them ascending.
  neg_pos = jnp.where(taken, -jnp.arange(1, num_patches + 1, dtype=jnp.int32),
                      jnp.iinfo(jnp.int32).min)
  _, order = jax.lax.top_k(neg_pos, heads * per_head)
  cls = jnp.zeros((batch, 1), jnp.int32)
  return jnp.concatenate([cls, order.astype(jnp.int32) + 1], axis=1)


def gather_tokens(features: jax.Array, indices: jax.Array) -> jax.Array:
  """``features[b, indices[b]]``: ``[B, S, D]`` x int ``[B, K]`` -> ``[B, K, D]``."""
  return jnp.take_along_axis(features, indices[..., None].astype(jnp.int32), axis=1)

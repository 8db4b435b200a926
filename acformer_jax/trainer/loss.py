"""Masked next-token loss, optionally with LM-head logits only where the loss needs them.

Spec: ``acformer.md`` 2.5 (shift by one, ``-100`` ignored, every supervised token counts).
``labels[:, t + 1]`` is predicted from position ``t``.

``loss_positions = K > 0`` computes the LM head on at most ``K`` positions per row (the first
``K`` supervised ones, in order) instead of all ``T``: the decoder still runs on the whole
sequence, but the ``[D, V]`` head, which dominates small models with a large vocabulary
(e.g. the tiny demo: 2 layers of 128 on LLaMA's 32000 tokens), only sees the rows the loss
reads. It is done from the outside with ``flax.linen.intercept_methods`` on the decoder's
``llm/lm_head`` (or ``llm/embed_tokens.attend`` when tied), so the model code is unchanged.
Supervised tokens beyond ``K`` in a row are not counted and are reported as
``dropped_tokens`` (the loop warns): choose ``K`` >= the longest supervised span.
"""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100
HEAD_PATHS = {("llm", "lm_head"): "__call__", ("llm", "embed_tokens"): "attend"}


def token_loss(logits: jax.Array, targets: jax.Array):
  """``(sum of CE, supervised count, correct argmaxes)`` for aligned ``logits [B,N,V]`` and
  ``targets [B,N]`` (``-100`` ignored)."""
  mask = targets != IGNORE_INDEX
  safe = jnp.where(mask, targets, 0)
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  correct = (jnp.argmax(logits, axis=-1) == safe) & mask
  return (jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(mask, dtype=jnp.int32),
          jnp.sum(correct, dtype=jnp.int32))


def shifted_targets(labels: jax.Array) -> jax.Array:
  """Targets aligned with positions ``0..T-1``: ``labels[:, t+1]``, the last one ignored."""
  pad = jnp.full((labels.shape[0], 1), IGNORE_INDEX, labels.dtype)
  return jnp.concatenate([labels[:, 1:], pad], axis=1)


def select_positions(labels: jax.Array, k: int):
  """The first ``k`` supervised positions per row: ``(positions [B,k], targets [B,k],
  dropped)``; unused slots point at position 0 with target ``-100``."""
  targets = shifted_targets(labels)
  mask = targets != IGNORE_INDEX
  t = labels.shape[1]
  # Supervised positions first (ascending), then the rest: a stable sort on the key.
  key = jnp.where(mask, 0, 1) * t + jnp.arange(t, dtype=jnp.int32)[None]
  order = jnp.argsort(key, axis=1)[:, :k].astype(jnp.int32)
  chosen = jnp.take_along_axis(mask, order, axis=1)
  positions = jnp.where(chosen, order, 0)
  picked = jnp.where(chosen, jnp.take_along_axis(targets, order, axis=1), IGNORE_INDEX)
  dropped = jnp.sum(mask, dtype=jnp.int32) - jnp.sum(chosen, dtype=jnp.int32)
  return positions, picked, dropped


@contextlib.contextmanager
def head_on_positions(positions: jax.Array):
  """Within the context, the decoder's LM head runs on ``hidden[b, positions[b]]`` only, so
  ``MultimodalLM`` returns logits ``[B, K, V]``."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    want = HEAD_PATHS.get(tuple(module.path) if module.scope is not None else ())
    if want is not None and context.method_name == want and module.parent is not None:
      x = jnp.take_along_axis(args[0], positions[..., None], axis=1)
      return next_fun(x, *args[1:], **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield

"""Masked next-token loss, optionally with LM-head logits only where the loss needs them.

Spec: ``docs/method.md`` 2.5 (shift by one, ``-100`` ignored, every supervised token counts).
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
import functools

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


# ----------------------------------------------------------------------------------------
# Vocab-tiled head + cross-entropy (``train.loss_impl = "tiled"``).
#
# The decoder returns its final (normed) hidden states instead of logits
# (:func:`hidden_instead_of_logits`), and :func:`head_loss` runs ``hidden @ kernel`` one vocab
# chunk at a time: forward keeps a running max / sum-exp / target logit / argmax per row,
# backward recomputes each chunk's logits and turns them into ``d hidden`` and that chunk's
# ``d kernel`` (a custom VJP). Peak memory is ``[N, chunk]`` float32, never ``[N, V]``.

LOSS_IMPLS = ("full", "tiled")


@contextlib.contextmanager
def hidden_instead_of_logits(positions=None):
  """Within the context the decoder's LM head is skipped: ``MultimodalLM`` returns the final
  hidden states ``[B, T, D]`` (``[B, K, D]`` at ``positions [B, K]``) where it would return
  logits. Pair with :func:`head_kernel` and :func:`head_loss`."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    want = HEAD_PATHS.get(tuple(module.path) if module.scope is not None else ())
    if want is not None and context.method_name == want and module.parent is not None:
      x = args[0]
      if positions is not None:
        x = jnp.take_along_axis(x, positions[..., None], axis=1)
      if module.is_initializing():
        next_fun(*args, **kwargs)
      return x
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield


def head_kernel(params) -> jax.Array:
  """The LM head ``[D, V]``: ``llm/lm_head/kernel``, or the transposed embedding when tied."""
  llm = nn.unbox(params)["llm"]
  if "lm_head" in llm:
    return llm["lm_head"]["kernel"]
  return llm["embed_tokens"]["embedding"].T


def _num_chunks(vocab: int, chunk: int) -> int:
  if chunk < 1:
    raise ValueError(f"train.vocab_chunk must be >= 1, got {chunk}")
  return -(-vocab // chunk)


def _chunk_logits(h, kernel, i, width, vocab, dtype):
  """Logits ``[N, width]`` float32 of vocab chunk ``i`` (columns past ``vocab`` -> -inf)."""
  w = jax.lax.dynamic_slice_in_dim(kernel, i * width, width, axis=1)
  logits = jnp.dot(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
  cols = i * width + jnp.arange(width)
  return jnp.where(cols[None] < vocab, logits, -jnp.inf), cols


def _padded(kernel, n, width):
  pad = n * width - kernel.shape[1]
  return jnp.pad(kernel, ((0, 0), (0, pad))) if pad else kernel


def _tiled_forward(h, kernel, targets, n, dtype):
  vocab = kernel.shape[1]
  width = -(-vocab // n)
  kp = _padded(kernel, n, width)
  rows = h.shape[0]

  def body(i, carry):
    m, s, tl, best, arg = carry
    logits, cols = _chunk_logits(h, kp, i, width, vocab, dtype)
    cm = jnp.max(logits, axis=1)
    new_m = jnp.maximum(m, cm)
    s = s * jnp.exp(m - new_m) + jnp.sum(jnp.exp(logits - new_m[:, None]), axis=1)
    hit = cols[None] == targets[:, None]
    tl = tl + jnp.sum(jnp.where(hit, logits, 0.0), axis=1)
    carg = i * width + jnp.argmax(logits, axis=1).astype(jnp.int32)
    better = cm > best  # first maximum wins, as jnp.argmax over the full row
    return new_m, s, tl, jnp.where(better, cm, best), jnp.where(better, carg, arg)

  neg = jnp.full((rows,), -jnp.inf, jnp.float32)
  zero = jnp.zeros((rows,), jnp.float32)
  m, s, tl, _, arg = jax.lax.fori_loop(0, n, body, (neg, zero, zero, neg, jnp.zeros((rows,), jnp.int32)))
  lse = m + jnp.log(s)
  return lse - tl, arg, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _tiled_ce(h, kernel, targets, n, dtype):
  ce, arg, _ = _tiled_forward(h, kernel, targets, n, dtype)
  return ce, arg


def _tiled_ce_fwd(h, kernel, targets, n, dtype):
  ce, arg, lse = _tiled_forward(h, kernel, targets, n, dtype)
  return (ce, arg), (h, kernel, targets, lse)


def _tiled_ce_bwd(n, dtype, res, cts):
  h, kernel, targets, lse = res
  g = cts[0].astype(jnp.float32)
  vocab = kernel.shape[1]
  width = -(-vocab // n)
  kp = _padded(kernel, n, width)

  def body(i, carry):
    dh, dk = carry
    logits, cols = _chunk_logits(h, kp, i, width, vocab, dtype)
    p = jnp.exp(logits - lse[:, None]) - (cols[None] == targets[:, None])
    dlogits = (p * g[:, None]).astype(dtype)
    w = jax.lax.dynamic_slice_in_dim(kp, i * width, width, axis=1).astype(dtype)
    dh = dh + jnp.dot(dlogits, w.T, preferred_element_type=jnp.float32)
    dw = jnp.dot(h.astype(dtype).T, dlogits, preferred_element_type=jnp.float32)
    return dh, jax.lax.dynamic_update_slice_in_dim(dk, dw.astype(dk.dtype), i * width, axis=1)

  dh, dk = jax.lax.fori_loop(0, n, body, (jnp.zeros(h.shape, jnp.float32),
                                          jnp.zeros(kp.shape, jnp.float32)))
  return dh.astype(h.dtype), dk[:, :vocab].astype(kernel.dtype), None


_tiled_ce.defvjp(_tiled_ce_fwd, _tiled_ce_bwd)


def head_loss(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, chunk: int = 8192,
              dtype=None):
  """:func:`token_loss` of ``hidden @ kernel`` without materialising the logits.

  Args:
    hidden: final hidden states ``[B, N, D]`` (from :func:`hidden_instead_of_logits`).
    kernel: the head ``[D, V]`` (:func:`head_kernel`).
    targets: ``[B, N]`` int, ``-100`` ignored.
    chunk: vocab columns per tile (the vocab is cut into ``ceil(V / chunk)`` equal tiles).
    dtype: matmul operand dtype (default: ``hidden``'s); accumulation is float32.
  Returns:
    ``(sum of CE, supervised count, correct argmaxes)``, as :func:`token_loss`.
  """
  b, n_pos, d = hidden.shape
  if kernel.ndim != 2 or kernel.shape[0] != d or targets.shape != (b, n_pos):
    raise ValueError(f"head_loss: hidden [B,N,D], kernel [D,V], targets [B,N] expected; got "
                     f"{hidden.shape}, {kernel.shape}, {targets.shape}")
  dtype = jnp.dtype(dtype or hidden.dtype)
  mask = (targets != IGNORE_INDEX).reshape(-1)
  safe = jnp.where(mask, targets.reshape(-1), 0).astype(jnp.int32)
  ce, arg = _tiled_ce(hidden.reshape(b * n_pos, d), kernel, safe,
                      _num_chunks(kernel.shape[1], chunk), dtype)
  correct = (arg == safe) & mask
  return (jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(mask, dtype=jnp.int32),
          jnp.sum(correct, dtype=jnp.int32))


def loss_options(train_cfg) -> dict:
  """``make_train_step``'s loss keywords from a ``train`` config (missing keys: defaults)."""
  get = train_cfg.get
  impl = str(get("loss_impl", "full"))
  if impl not in LOSS_IMPLS:
    raise ValueError(f"train.loss_impl={impl!r} is not one of {LOSS_IMPLS}")
  return dict(loss_positions=int(get("loss_positions", 0)), loss_impl=impl,
              vocab_chunk=int(get("vocab_chunk", 8192)))

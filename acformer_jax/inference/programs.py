"""The compiled programs of generation: prefill and the decode loop.

Spec: ``docs/jax_practices.md`` item 11 (separate prefill and decode, a preallocated KV cache
with its own logical axes sharded like the model, the decode loop as one jitted
``lax.while_loop``, vision features computed once per request) and ``docs/benchmarks.md`` 1.

Masking (docs/design.md): prompts are left-padded to ``P`` slots; ``kv_mask`` is
``[prompt_mask, 1 ... 1]`` for the whole generation (causality hides the slots not yet
written) and RoPE positions count real tokens only, so pad slots change nothing.
One :class:`Programs` exists per ``(model, mesh)`` (:func:`programs`), so engines over
the same model share compiled code; ``traces`` counts how often they were traced.
"""
from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax import sharding as sharding_lib
from acformer_jax.inference import sampling
from acformer_jax.models import llama

ANY_TOKEN, NO_TOKEN = -1, -2  # stop-sequence padding: matches anything / nothing


class Programs:
  """Jitted ``prefill`` and ``decode`` for one ``MultimodalLM`` (and optional mesh)."""

  def __init__(self, model, mesh=None):
    self.model = model
    self.mesh = mesh
    self.traces = 0
    self.prefill = jax.jit(self._prefill_impl, static_argnames=("extra", "with_images"))
    self.decode = jax.jit(self._decode_impl, donate_argnums=(1,),
                          static_argnames=("max_new_tokens", "sampler", "return_scores"))

  def context(self):
    """Logical-axis rules (+ the mesh) around the jitted calls, seen when they trace."""
    stack = contextlib.ExitStack()
    stack.enter_context(nn.logical_axis_rules(sharding_lib.LOGICAL_AXIS_RULES))
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
    return stack

  def _constrain_cache(self, cache):
    if self.mesh is None:
      return cache
    shardings = sharding_lib.logical_to_sharding(llama.cache_logical_spec(), self.mesh)
    return jax.lax.with_sharding_constraint(cache, shardings)

  def _apply(self, params, *args, method):
    return self.model.apply({"params": params}, *args, method=method)

  def _embed_tokens(self, params, ids):
    return self._apply(params, ids, method=lambda m, x: m.llm.embed(x))

  def _prefill_impl(self, params, images, input_ids, prompt_mask, *, extra: int,
                    with_images: bool):
    """Vision once, then the prompt through the LLM into a fresh cache of
    ``P + extra`` slots. Returns ``(last_logits [B, V], cache, kv_mask, lengths)``."""
    self.traces += 1
    b, p = input_ids.shape
    if with_images:
      visual = self._apply(params, images, method="encode_images")
      embeds = self._apply(params, input_ids, visual, method="embed")
    else:
      embeds = self._embed_tokens(params, input_ids)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0).astype(jnp.int32)
    kv_mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, extra), bool)], axis=1)
    cache = llama.init_cache(self.model.config.llm, b, p + extra, self.model.config.dtype)
    cache = self._constrain_cache(cache)
    logits, cache = self._apply(params, embeds, positions, kv_mask, cache, 0, True,
                                method="decode")  # LM head on the last position only
    cache = self._constrain_cache(cache)
    lengths = prompt_mask.sum(axis=-1).astype(jnp.int32)
    return logits[:, -1], cache, kv_mask, lengths

  def _decode_impl(self, params, cache, kv_mask, lengths, first_logits, valid, rng, eos,
                   stop_seqs, *, max_new_tokens: int, sampler: sampling.SamplerConfig,
                   return_scores: bool):
    """The whole decode loop as one ``lax.while_loop`` (stops when all rows are done).

    ``stop_seqs`` is ``int32 [n, L]``: right-aligned stop sequences left-padded with
    ``ANY_TOKEN``; a row ending in ``NO_TOKEN`` never matches (traced, not static).
    """
    self.traces += 1
    llm = self.model.config.llm
    b, s_max = kv_mask.shape
    p = s_max - (max_new_tokens - 1)
    vocab = first_logits.shape[-1]

    def pick(logits, i, done):
      tok = sampling.sample(logits, jax.random.fold_in(rng, i), sampler)
      return jnp.where(done, llm.pad_token_id, tok)

    def finish(out, tok, i, done, reason):
      """Marks rows done on EOS (reason 1) or a stop token sequence (reason 2)."""
      hit_eos = (tok == eos) & ~done
      new_reason = jnp.where(hit_eos, 1, reason)
      n = stop_seqs.shape[1]
      window = jax.lax.dynamic_slice_in_dim(  # the last n tokens, -1 before the first one
          jnp.pad(out, ((0, 0), (n, 0)), constant_values=-1), i + 1, n, axis=1)
      match = (window[:, None, :] == stop_seqs[None]) | (stop_seqs[None] == ANY_TOKEN)
      hit_stop = jnp.any(jnp.all(match, axis=-1), axis=-1) & ~done & ~hit_eos
      new_reason = jnp.where(hit_stop, 2, new_reason)
      return done | hit_eos | hit_stop, new_reason

    out = jnp.full((b, max_new_tokens), llm.pad_token_id, jnp.int32)
    scores = jnp.zeros((b, max_new_tokens, vocab) if return_scores else (0,), jnp.float32)
    done = ~valid
    tok = pick(first_logits, 0, done)
    out = out.at[:, 0].set(tok)
    if return_scores:
      scores = scores.at[:, 0].set(first_logits)
    num = jnp.where(done, 0, 1).astype(jnp.int32)
    reason = jnp.zeros((b,), jnp.int32)
    done, reason = finish(out, tok, 0, done, reason)

    def cond(carry):
      i, _, _, done, *_ = carry
      return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
      i, cache, out, done, num, reason, scores = carry
      prev = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
      embeds = self._embed_tokens(params, prev)
      positions = (lengths + i - 1)[:, None]
      logits, cache = self._apply(params, embeds, positions, kv_mask, cache, p + i - 1,
                                  method="decode")
      cache = self._constrain_cache(cache)
      logits = logits[:, 0]
      tok = pick(logits, i, done)
      out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
      if return_scores:
        scores = jax.lax.dynamic_update_slice_in_dim(scores, logits[:, None], i, axis=1)
      num = num + jnp.where(done, 0, 1)
      done, reason = finish(out, tok, i, done, reason)
      return i + 1, cache, out, done, num, reason, scores

    carry = (jnp.int32(1), cache, out, done, num, reason, scores)
    _, cache, out, _, num, reason, scores = jax.lax.while_loop(cond, body, carry)
    # The cache is returned (and dropped by the caller) so the loop can reuse the donated
    # buffer in place instead of holding a second copy.
    return out, num, reason, scores, cache


@functools.lru_cache(maxsize=8)
def programs(model, mesh=None) -> Programs:
  """The shared :class:`Programs` of ``(model, mesh)`` (both hashable)."""
  return Programs(model, mesh)

"""LLaMA-style decoder (spec ``docs/method.md`` 3.1): RMSNorm, RoPE (theta, HF ``linear`` and
``llama3`` scaling), grouped-query attention, SwiGLU, tied or untied head, and a
functional KV cache.

``LlamaModel(config: LLMConfig, dtype=..., param_dtype=..., scan_layers=..., remat_policy=...)``;
build it from a ``ModelConfig`` with ``LlamaModel(mc.llm, **layers.tower_options(mc))``.

Masking contract (docs/design.md): key slot ``j`` is visible to the query in slot ``q``
iff ``j <= q`` and ``kv_mask[b, j]``. Without a cache, slots are sequence positions and
``kv_mask`` is ``[B, T]``; with a cache, the ``T`` new tokens occupy slots
``cache_index .. cache_index + T - 1`` and ``kv_mask`` is ``[B, S_max]``. RoPE uses
``positions``, independent of slots (so left padding works).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from acformer_jax.config import LLMConfig
from acformer_jax.models.attention import attention as attend
from acformer_jax.models.layers import (ATTN_OUT, DEFAULT_KERNEL_INIT, MLP_IN, QKV_PROJ, DType,
                                        RMSNorm, constrain, dense, partitioned, stacked, to_dtype)

Cache = dict  # {"k": [layers, B, kv_heads, S_max, head_dim], "v": same}
CACHE_AXES = ("layers", "cache_batch", "cache_kv_heads", "cache_length", "cache_head_dim")
_ACT = ("activation_batch", "activation_length", "activation_embed")


def init_cache(config: LLMConfig, batch: int, max_len: int, dtype: DType = "float32") -> Cache:
  """An empty KV cache ``{"k", "v"}`` of ``[layers, batch, kv_heads, max_len, head_dim]``
  (heads before slots: the attention matmuls read it without a transpose)."""
  shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.resolved_head_dim)
  return {"k": jnp.zeros(shape, to_dtype(dtype)), "v": jnp.zeros(shape, to_dtype(dtype))}


def cache_logical_spec() -> Cache:
  """Logical PartitionSpecs of the cache (feed to ``sharding.logical_to_sharding``)."""
  return {"k": PartitionSpec(*CACHE_AXES), "v": PartitionSpec(*CACHE_AXES)}


def rope_inv_freq(config: LLMConfig) -> np.ndarray:
  """RoPE inverse frequencies ``[head_dim // 2]`` float32, following transformers'
  ``modeling_rope_utils`` for the default, ``linear`` and ``llama3`` rope types."""
  dim = config.resolved_head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  rs = dict(config.rope_scaling or ())
  kind = rs.get("rope_type", rs.get("type", "default"))
  if kind == "default":
    pass
  elif kind == "linear":
    inv = inv / float(rs["factor"])
  elif kind == "llama3":
    factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_len = float(rs.get("original_max_position_embeddings", config.max_position_embeddings))
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_len / lo, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    inv = np.where(medium, smoothed, scaled)
  else:
    raise ValueError(f"llm.rope_scaling rope_type={kind!r} is not supported; "
                     "expected 'default', 'linear' or 'llama3'")
  return inv.astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> Tuple[jax.Array, jax.Array]:
  """``cos, sin`` of ``[B, T, head_dim]`` (float32, HF's duplicated-halves layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half RoPE on ``x [B, T, heads, head_dim]`` (no q/k permutation needed)."""
  cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class LlamaAttention(nn.Module):
  """Grouped-query attention; query head ``h`` uses kv head ``h // (heads // kv_heads)``."""
  config: LLMConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"

  @nn.compact
  def __call__(self, x, cos, sin, mask, cache_index, cache, layer):
    """``cache``: the stacked ``[layers, B, kv_heads, S_max, head_dim]`` cache (or None);
    ``layer``: this layer's index in it; ``mask``: the masking keyword arguments of
    ``attention.attention`` (dict). Returns ``(out, updated cache)``."""
    cfg = self.config
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dict(kw, use_bias=cfg.attention_bias)
    b, t, _ = x.shape
    q = dense(h * hd, ("embed", "heads"), name="q_proj", **qkv)(x).reshape(b, t, h, hd)
    k = dense(kvh * hd, ("embed", "kv_heads"), name="k_proj", **qkv)(x).reshape(b, t, kvh, hd)
    v = dense(kvh * hd, ("embed", "kv_heads"), name="v_proj", **qkv)(x).reshape(b, t, kvh, hd)
    q = constrain(apply_rope(q, cos, sin), ("activation_batch", "activation_length", "activation_heads", None))
    k = constrain(apply_rope(k, cos, sin), ("activation_batch", "activation_length", "activation_kv_heads", None))
    v = constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
    q, k, v = (checkpoint_name(a, QKV_PROJ) for a in (q, k, v))  # remat policy names
    new_cache = None
    if cache is not None:
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, kv_heads, T, head_dim]
      # The whole stacked cache is updated at (layer, :, cache_index) and this layer's slice
      # read back: XLA updates the loop-carried buffer in place (no per-step cache copy).
      start = (layer, 0, 0, cache_index, 0)
      new_cache = {n: jax.lax.dynamic_update_slice(cache[n], new[None].astype(cache[n].dtype), start)
                   for n, new in (("k", k), ("v", v))}
      k, v = (jax.lax.dynamic_index_in_dim(new_cache[n], layer, keepdims=False).astype(q.dtype)
              for n in ("k", "v"))
    # Mistral's sliding window: slot distance = position distance within a sequence.
    out = attend(q, k, v, impl=self.attention, causal=True, kv_heads_major=cache is not None,
                 sliding_window=cfg.sliding_window or None, **mask).reshape(b, t, h * hd)
    out = dense(cfg.hidden_size, ("heads", "embed"), name="o_proj", **kw)(out)
    return checkpoint_name(out, ATTN_OUT), new_cache


MLP_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


class LlamaMLP(nn.Module):
  """Gated MLP: ``down(act(gate(x)) * up(x))``; SwiGLU (``silu``) or GeGLU (``gelu_tanh``)."""
  config: LLMConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = checkpoint_name(dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x),
                           MLP_IN)
    up = checkpoint_name(dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x),
                         MLP_IN)
    y = constrain(MLP_ACTIVATIONS[cfg.mlp_activation](gate) * up,
                  ("activation_batch", "activation_length", "activation_mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(y)


class LlamaBlock(nn.Module):
  """Pre-norm decoder block; scan body ``((x, cache, layer), cos, sin, mask, cache_index)``
  with the KV cache (or None) and the layer index in the carry."""
  config: LLMConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  attention: str = "xla"

  @nn.compact
  def __call__(self, carry, cos, sin, mask, cache_index):
    x, cache, layer = carry
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = dict(kw, unit_offset=cfg.norm_unit_offset)
    a, cache = LlamaAttention(cfg, name="self_attn", attention=self.attention, **kw)(
        RMSNorm(cfg.rms_norm_eps, name="input_layernorm", **norm)(x), cos, sin, mask, cache_index,
        cache, layer)
    x = x + a
    x = x + LlamaMLP(cfg, name="mlp", **kw)(
        RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm", **norm)(x))
    return (constrain(x, _ACT), cache, layer + 1), None


class LlamaModel(nn.Module):
  """The decoder: ``embed`` and ``__call__`` (docs/design.md).

  Attributes:
    config: the ``LLMConfig``.
    dtype: compute dtype (``ModelConfig.dtype``); norms and softmax run in float32,
      logits are returned in float32.
    param_dtype: parameter dtype (``ModelConfig.param_dtype``).
    scan_layers: ``False`` unrolls the layer scan (same parameter layout).
    remat_policy: a ``layers.REMAT_POLICIES`` name (see ``layers.remat_policy``).
    attention: ``ModelConfig.attention`` (``models/attention.py``).
  """
  config: LLMConfig
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention: str = "xla"

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if cfg.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"llm.mlp_activation={cfg.mlp_activation!r} is not one of "
                       f"{sorted(MLP_ACTIVATIONS)}")
    if cfg.num_heads % cfg.num_kv_heads:
      raise ValueError(f"llm.num_heads={cfg.num_heads} must be a multiple of "
                       f"llm.num_kv_heads={cfg.num_kv_heads}")
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=to_dtype(self.dtype),
        param_dtype=to_dtype(self.param_dtype),
        embedding_init=partitioned(DEFAULT_KERNEL_INIT, ("vocab", "embed")))
    self.layers = stacked(LlamaBlock, length=cfg.num_layers, scan_layers=self.scan_layers,
                          remat=self.remat_policy, in_axes=(nn.broadcast,) * 4,
                          cast_kernels_to=self.dtype)(
                              cfg, attention=self.attention, **kw)
    self.norm = RMSNorm(cfg.rms_norm_eps, unit_offset=cfg.norm_unit_offset, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, **kw)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings ``[B, T, D]`` in the compute dtype (times ``sqrt(D)`` with
    ``scale_embeddings``, the factor rounded to the compute dtype as HF does)."""
    x = self.embed_tokens(input_ids)
    if self.config.scale_embeddings:
      x = x * jnp.asarray(self.config.hidden_size ** 0.5, x.dtype)
    return constrain(x, _ACT)

  def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, kv_mask: jax.Array,
               cache: Optional[Cache] = None, cache_index=None, last_only: bool = False,
               segment_ids: Optional[jax.Array] = None):
    """Returns ``(logits [B,T,V] float32, new_cache)`` (``new_cache`` is None without a cache).

    ``last_only``: the LM head runs on the last position only (``[B,1,V]``): a prefill needs
    nothing else, and at a 32k vocabulary the head over every prompt position costs more
    than the decoder layers.
    ``segment_ids``: int ``[B, T]`` of packed rows (training, no cache): key ``j`` is also
    required to be in the query's segment (0 = padding, never visible).
    """
    b, t, _ = inputs_embeds.shape
    if self.is_initializing() and not self.config.tie_word_embeddings:
      self.embed_tokens(jnp.zeros((1, 1), jnp.int32))  # create the table at init
    s = t if cache is None else cache["k"].shape[3]
    if tuple(kv_mask.shape) != (b, s):
      raise ValueError(f"kv_mask must be [B, {'T' if cache is None else 'S_max'}] = {(b, s)}, "
                       f"got {tuple(kv_mask.shape)}")
    if cache is not None and cache_index is None:
      raise ValueError("cache_index is required when a cache is given")
    start = 0 if cache is None else cache_index
    mask = dict(kv_mask=kv_mask.astype(bool))  # causal is added by LlamaAttention
    if cache is not None:
      mask["q_offset"] = start
    if segment_ids is not None:  # packed rows (training only, no cache)
      if cache is not None:
        raise ValueError("segment_ids are for teacher-forced (cache-free) calls only")
      mask.update(q_segment_ids=segment_ids, kv_segment_ids=segment_ids)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(self.config))
    x = constrain(inputs_embeds.astype(to_dtype(self.dtype)), _ACT)
    (x, new_cache, _), _ = self.layers((x, cache, jnp.int32(0)), cos, sin, mask, start)
    if last_only:
      x = x[:, -1:]
    x = self.norm(x)
    if self.config.tie_word_embeddings:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    logits = constrain(logits.astype(jnp.float32),
                       ("activation_batch", "activation_length", "activation_vocab"))
    return logits, new_cache

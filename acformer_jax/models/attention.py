"""One dot-product attention for the decoder, the ViT and the connector (issue #14).

``attention(q [B,T,H,D], k [B,S,K,D], v [B,S,K,D], *, impl, causal, ...) -> [B,T,H,D]``
(docs/design.md, CONTRACT "Attention function"). Query head ``h`` uses kv head
``h // (H // K)`` (grouped-query attention). Key ``j`` is visible to query ``i`` iff

* ``causal``: ``j <= q_offset + i`` (``q_offset`` = cache slot of query 0, may be traced);
* ``sliding_window=W``: also ``q_offset + i - j < W`` (needs ``causal``);
* ``kv_mask[b, j]`` (default all True);
* segment ids given: ``q_segment_ids[b, i] == kv_segment_ids[b, j] > 0``.

Query rows with segment id 0 (padding) return zeros with every implementation. Rows
that see no key at all for another reason (e.g. left padding) are unspecified.

Implementations (``ModelConfig.attention``):

* ``xla``: einsum scores, float32 softmax over a materialised ``[B,K,G,T,S]`` score
  tensor. The reference and the CPU default; runs everywhere.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, bf16/fp16).
  Segment ids / ``kv_mask`` / decode offsets become a dense boolean mask.
* ``splash``: the Pallas TPU splash-attention kernel (block-sparse causal or local
  mask, segment ids, GQA), run per device under ``shard_map`` over the ambient mesh
  (batch over the ``activation_batch`` axes, heads over ``activation_heads``).
  ``splash_interpret`` is the same kernel run by the Pallas interpreter (CPU tests).
* ``auto``: ``splash`` on TPU, ``cudnn`` on GPU, ``xla`` elsewhere.

A kernel only takes the shapes it supports; otherwise the call runs ``xla`` (same
semantics). ``splash`` needs ``T == S`` (no cache: cached prefill and decode use
``xla``), ``T % 128 == 0`` and a static ``q_offset == 0``; ``cudnn`` needs bf16/fp16
inputs and ``head_dim <= 128``, ``head_dim % 8 == 0``. ``cudnn`` on a non-GPU backend is
an error.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

IMPLS = ("xla", "cudnn", "splash", "splash_interpret", "auto")
SPLASH_BLOCK = 128


def _platform() -> str:
  """Platform of the ambient mesh (AOT for a TPU topology traces on a CPU host), else
  the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def _static_zero(x) -> bool:
  return isinstance(x, (int, np.integer)) and int(x) == 0


def resolve_impl(impl: str, *, t: int, s: int, q_offset, head_dim: int, dtype,
                 platform: Optional[str] = None) -> str:
  """The implementation a call with these shapes runs (``xla`` when a kernel cannot)."""
  if impl not in IMPLS:
    raise ValueError(f"model.attention={impl!r} is not one of {IMPLS}")
  platform = platform or _platform()
  if impl == "auto":
    impl = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")
  if impl == "cudnn":
    if platform not in ("gpu", "cuda"):
      raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU, but the backend is "
                       f"{platform!r}; use 'xla' or 'auto'")
    # Cache-free calls only: decode steps (traced q_offset) are memory-bound and run xla.
    ok = (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim <= 128
          and head_dim % 8 == 0 and _static_zero(q_offset))
    return "cudnn" if ok else "xla"
  if impl in ("splash", "splash_interpret"):
    ok = t == s and t % SPLASH_BLOCK == 0 and _static_zero(q_offset)
    return impl if ok else "xla"
  return impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "xla", causal: bool,
              q_segment_ids: Optional[jax.Array] = None,
              kv_segment_ids: Optional[jax.Array] = None, q_offset=0,
              kv_mask: Optional[jax.Array] = None, sliding_window: Optional[int] = None,
              scale: Optional[float] = None, logits_soft_cap: Optional[float] = None,
              kv_heads_major: bool = False) -> jax.Array:
  """Masked multi-head attention (module docstring has the rules).

  Args:
    q: ``[B, T, H, D]``.
    k, v: ``[B, S, K, D]`` (or ``[B, K, S, D]`` with ``kv_heads_major``: the KV-cache layout,
      read without a transpose by ``xla``).
    impl: one of ``IMPLS``.
    causal: causal mask with query ``i`` at slot ``q_offset + i``.
    q_segment_ids, kv_segment_ids: int ``[B, T]`` / ``[B, S]`` (both or neither).
    q_offset: int or int scalar array.
    kv_mask: bool ``[B, S]``.
    sliding_window: keys at most ``W - 1`` slots behind the query (causal only).
    scale: score scale (default ``D ** -0.5``).
    logits_soft_cap: ``cap * tanh(scores / cap)`` before the mask.
  Returns:
    ``[B, T, H, D]`` in ``q.dtype``.
  """
  if k.shape != v.shape or q.ndim != 4 or k.ndim != 4:
    raise ValueError(f"attention: q must be [B,T,H,D] and k, v equal [B,S,K,D]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if kv_heads_major:
    (b, t, h, d), (_, kvh, s, _) = q.shape, k.shape
  else:
    (b, t, h, d), (_, s, kvh, _) = q.shape, k.shape
  if h % kvh or k.shape[0] != b or k.shape[-1] != d:
    raise ValueError(f"attention: {h} query heads need a divisor count of kv heads and equal "
                     f"batch/head_dim; got q {q.shape}, k {k.shape}")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither")
  if q_segment_ids is not None and (q_segment_ids.shape != (b, t) or kv_segment_ids.shape != (b, s)):
    raise ValueError(f"attention: segment ids must be [B,T]={(b, t)} and [B,S]={(b, s)}; got "
                     f"{q_segment_ids.shape} and {kv_segment_ids.shape}")
  if kv_mask is not None and kv_mask.shape != (b, s):
    raise ValueError(f"attention: kv_mask must be [B,S]={(b, s)}, got {kv_mask.shape}")
  if sliding_window is not None and (not causal or sliding_window < 1):
    raise ValueError(f"attention: sliding_window={sliding_window} needs causal=True and >= 1")
  scale = d ** -0.5 if scale is None else float(scale)
  chosen = resolve_impl(impl, t=t, s=s, q_offset=q_offset, head_dim=d, dtype=q.dtype)
  if kv_heads_major and chosen != "xla":
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    kv_heads_major = False
  kw = dict(causal=causal, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
            kv_mask=kv_mask, sliding_window=sliding_window, scale=scale,
            logits_soft_cap=logits_soft_cap)
  if chosen == "xla":
    out = xla_attention(q, k, v, q_offset=q_offset, kv_heads_major=kv_heads_major, **kw)
  elif chosen == "cudnn":
    out = cudnn_attention(q, k, v, q_offset=q_offset, **kw)
  else:
    out = splash_attention(q, k, v, interpret=chosen == "splash_interpret", **kw)
  if q_segment_ids is not None:
    out = jnp.where((q_segment_ids > 0)[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out


def dense_mask(b: int, t: int, s: int, *, causal, q_segment_ids, kv_segment_ids, q_offset,
               kv_mask, sliding_window) -> jax.Array:
  """Boolean visibility ``[B or 1, T or 1, S or 1]`` from the masking arguments."""
  mask = jnp.ones((1, 1, 1), bool)
  if causal:
    q_slots = q_offset + jnp.arange(t, dtype=jnp.int32)[:, None]
    k_slots = jnp.arange(s, dtype=jnp.int32)[None, :]
    m = k_slots <= q_slots
    if sliding_window is not None:
      m &= q_slots - k_slots < sliding_window
    mask = mask & m[None]
  if kv_mask is not None:
    mask = mask & kv_mask.astype(bool)[:, None, :]
  if q_segment_ids is not None:
    mask = mask & ((q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
                   & (kv_segment_ids > 0)[:, None, :])
  return mask


def xla_attention(q, k, v, *, causal, q_segment_ids=None, kv_segment_ids=None, q_offset=0,
                  kv_mask=None, sliding_window=None, scale, logits_soft_cap=None,
                  kv_heads_major=False):
  """Einsum attention with a float32 softmax (the reference implementation)."""
  b, t, h, d = q.shape
  if not kv_heads_major:
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]
  kvh, s = k.shape[1], k.shape[2]
  qg = q.reshape(b, t, kvh, h // kvh, d)
  scores = jnp.einsum("btkgd,bksd->bkgts", qg, k).astype(jnp.float32) * scale
  if logits_soft_cap:
    scores = logits_soft_cap * jnp.tanh(scores / logits_soft_cap)
  mask = dense_mask(b, t, s, causal=causal, q_segment_ids=q_segment_ids,
                    kv_segment_ids=kv_segment_ids, q_offset=q_offset, kv_mask=kv_mask,
                    sliding_window=sliding_window)
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(b, t, h, d)


def cudnn_attention(q, k, v, *, causal, q_segment_ids=None, kv_segment_ids=None, q_offset=0,
                    kv_mask=None, sliding_window=None, scale, logits_soft_cap=None):
  """cuDNN fused attention; masks other than plain causal go in as a dense bool mask."""
  if logits_soft_cap:
    raise ValueError("model.attention='cudnn' does not support logits_soft_cap; use 'xla'")
  b, t, _, _ = q.shape
  s = k.shape[1]
  plain = (q_segment_ids is None and kv_mask is None and _static_zero(q_offset) and t == s)
  if plain:
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                        local_window_size=window, implementation="cudnn")
  mask = dense_mask(b, t, s, causal=causal, q_segment_ids=q_segment_ids,
                    kv_segment_ids=kv_segment_ids, q_offset=q_offset, kv_mask=kv_mask,
                    sliding_window=sliding_window)
  mask = jnp.broadcast_to(mask, (b, t, s))[:, None]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")


def _splash_kernel(heads: int, t: int, *, causal: bool, sliding_window, soft_cap, interpret):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  if sliding_window is not None:
    one = sa.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
  elif causal:
    one = sa.CausalMask((t, t))
  else:
    one = sa.FullMask((t, t))
  blk = min(SPLASH_BLOCK * 4, t) if t % (SPLASH_BLOCK * 4) == 0 else SPLASH_BLOCK
  sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=SPLASH_BLOCK,
                        block_q_dkv=blk, block_kv_dkv=blk, block_kv_dkv_compute=SPLASH_BLOCK,
                        block_q_dq=blk, block_kv_dq=blk)
  return sa.make_splash_mha(sa.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1,
                            q_seq_shards=1, attn_logits_soft_cap=soft_cap, interpret=interpret)


def _mesh_axis_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def splash_attention(q, k, v, *, causal, q_segment_ids=None, kv_segment_ids=None, kv_mask=None,
                     sliding_window=None, scale, logits_soft_cap=None, interpret=False):
  """Splash attention (``T == S``, ``T % 128 == 0``) under ``shard_map`` when a mesh is set.

  ``kv_mask`` and segment ids become the kernel's segment ids: masked keys get id -1,
  padding queries id -1 too, so every query row sees at least its own slot (no NaN).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  b, t, h, _ = q.shape
  valid = jnp.ones((b, t), bool) if kv_mask is None else kv_mask.astype(bool)
  if q_segment_ids is None:
    q_seg = jnp.where(valid, 1, -1).astype(jnp.int32)
    kv_seg = q_seg
  else:
    q_seg = jnp.where(q_segment_ids > 0, q_segment_ids, -1).astype(jnp.int32)
    kv_seg = jnp.where(valid & (kv_segment_ids > 0), kv_segment_ids, -1).astype(jnp.int32)
  q = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)  # [B, H, T, D]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

  def local(q, k, v, q_seg, kv_seg):
    kernel = _splash_kernel(q.shape[1], t, causal=causal, sliding_window=sliding_window,
                            soft_cap=logits_soft_cap, interpret=interpret)
    fn = lambda q1, k1, v1, qs, ks: kernel(q1, k1, v1, segment_ids=sa.SegmentIds(qs, ks))
    # Mosaic rejects an fp32 contract precision on bf16 operands. This covers the forward;
    # the backward kernels are traced later, so keep a global
    # jax_default_matmul_precision="highest" off when training bf16 with splash.
    precision = "highest" if q.dtype == jnp.float32 else "default"
    with jax.default_matmul_precision(precision):
      return jax.vmap(fn)(q, k, v, q_seg, kv_seg)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    out = local(q, k, v, q_seg, kv_seg)
  else:
    batch_axes, heads_axes = (nn.logical_to_mesh_axes((n,))[0]
                              for n in ("activation_batch", "activation_heads"))
    if b % _mesh_axis_size(mesh, batch_axes):
      batch_axes = None
    if (h % _mesh_axis_size(mesh, heads_axes)) or (k.shape[1] % _mesh_axis_size(mesh, heads_axes)):
      heads_axes = None
    qkv = PartitionSpec(batch_axes, heads_axes, None, None)
    seg = PartitionSpec(batch_axes, None)
    out = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv,
                        check_vma=False)(q, k, v, q_seg, kv_seg)
  return out.transpose(0, 2, 1, 3)

"""models/attention.py: every implementation against a naive numpy reference (fp32)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax import aot_lib, sharding
from acformer_jax.models import attention as attn_lib


def naive(q, k, v, *, causal, q_seg=None, kv_seg=None, q_offset=0, kv_mask=None, window=None,
          scale=None, cap=None):
  """Loop-free numpy float64 reference; rows without visible keys and padding rows -> 0."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, d = q.shape
  s, kvh = k.shape[1], k.shape[2]
  k = np.repeat(k, h // kvh, axis=2)
  v = np.repeat(v, h // kvh, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) * (d ** -0.5 if scale is None else scale)
  if cap:
    scores = cap * np.tanh(scores / cap)
  qi = q_offset + np.arange(t)[:, None]
  kj = np.arange(s)[None]
  vis = np.ones((b, t, s), bool)
  if causal:
    vis &= (kj <= qi)[None]
  if window:
    vis &= (qi - kj < window)[None]
  if kv_mask is not None:
    vis &= np.asarray(kv_mask)[:, None, :]
  if q_seg is not None:
    q_seg, kv_seg = np.asarray(q_seg), np.asarray(kv_seg)
    vis &= (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg > 0)[:, None, :]
  scores = np.where(vis[:, None], scores, -np.inf)
  m = np.max(scores, axis=-1, keepdims=True)
  p = np.exp(scores - np.where(np.isfinite(m), m, 0))
  p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
  out = np.einsum("bhts,bshd->bthd", p, v)
  return out, vis.any(-1)  # [B,T,H,D], rows with a visible key [B,T]


def rand(shape, seed):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


def packed_segments(b, t, seed=0):
  """Rows of 2-3 samples then padding (0), like the packed batch."""
  r = np.random.RandomState(seed)
  seg = np.zeros((b, t), np.int32)
  for i in range(b):
    cuts = np.sort(r.choice(np.arange(2, t - 2), 2, replace=False))
    seg[i, :cuts[0]], seg[i, cuts[0]:cuts[1]] = 1, 2
    if i % 2:
      seg[i, cuts[1]:] = 3
  return jnp.asarray(seg)


def check(out, ref, rows, tol=1e-5):
  out = np.asarray(out)
  np.testing.assert_allclose(out[rows], ref[rows], atol=tol, rtol=tol)


@pytest.mark.parametrize("case", ["causal_gqa", "segments", "decode", "window", "cross", "softcap"])
def test_xla_matches_naive(case):
  b, t, h, kvh, d = 2, 16, 4, 2, 8
  q, k, v = rand((b, t, h, d), 0), rand((b, t, kvh, d), 1), rand((b, t, kvh, d), 2)
  kw, ref_kw = dict(causal=True), dict(causal=True)
  if case == "segments":
    seg = packed_segments(b, t)
    kw.update(q_segment_ids=seg, kv_segment_ids=seg)
    ref_kw.update(q_seg=seg, kv_seg=seg)
  elif case == "decode":  # 3 new tokens at cache slots 9..11 of a 16-slot cache
    q = q[:, :3]
    mask = jnp.asarray(np.arange(t)[None] >= np.array([[2], [0]]))  # left padding of row 0
    kw.update(q_offset=jnp.int32(9), kv_mask=mask)
    ref_kw.update(q_offset=9, kv_mask=mask)
  elif case == "window":
    kw.update(sliding_window=4)
    ref_kw.update(window=4)
  elif case == "cross":
    k, v = rand((b, 24, kvh, d), 3), rand((b, 24, kvh, d), 4)
    kw, ref_kw = dict(causal=False, scale=0.5), dict(causal=False, scale=0.5)
  elif case == "softcap":
    kw.update(logits_soft_cap=2.0)
    ref_kw.update(cap=2.0)
  out = jax.jit(lambda q, k, v: attn_lib.attention(q, k, v, impl="xla", **kw))(q, k, v)
  ref, rows = naive(q, k, v, **ref_kw)
  check(out, ref, rows)
  if case == "segments":  # padding query rows are exactly zero
    assert np.all(np.asarray(out)[np.asarray(kw["q_segment_ids"]) == 0] == 0)


def test_kv_heads_major_layout_matches():
  q, k, v = rand((1, 4, 4, 8), 0), rand((1, 10, 2, 8), 1), rand((1, 10, 2, 8), 2)
  kw = dict(impl="xla", causal=True, q_offset=5)
  a = attn_lib.attention(q, k, v, **kw)
  b = attn_lib.attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), kv_heads_major=True, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resolve_impl_and_errors():
  r = attn_lib.resolve_impl
  assert r("auto", t=256, s=256, q_offset=0, head_dim=64, dtype=jnp.bfloat16, platform="tpu") == "splash"
  assert r("auto", t=256, s=256, q_offset=0, head_dim=64, dtype=jnp.bfloat16, platform="gpu") == "cudnn"
  assert r("auto", t=256, s=256, q_offset=0, head_dim=64, dtype=jnp.float32, platform="cpu") == "xla"
  # Decode and cached prefill, odd lengths: splash runs the xla path.
  assert r("splash", t=1, s=256, q_offset=jnp.int32(3), head_dim=64, dtype=jnp.float32, platform="tpu") == "xla"
  assert r("splash", t=577, s=577, q_offset=0, head_dim=64, dtype=jnp.float32, platform="tpu") == "xla"
  assert r("cudnn", t=8, s=8, q_offset=0, head_dim=64, dtype=jnp.float32, platform="gpu") == "xla"
  assert r("cudnn", t=1, s=64, q_offset=jnp.int32(5), head_dim=64, dtype=jnp.bfloat16, platform="gpu") == "xla"
  assert r("cudnn", t=16, s=64, q_offset=0, head_dim=64, dtype=jnp.bfloat16, platform="gpu") == "cudnn"
  with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU, but the backend is 'cpu'"):
    attn_lib.attention(rand((1, 8, 2, 8), 0), rand((1, 8, 2, 8), 1), rand((1, 8, 2, 8), 2),
                       impl="cudnn", causal=True)
  with pytest.raises(ValueError, match="model.attention='flash' is not one of"):
    r("flash", t=8, s=8, q_offset=0, head_dim=8, dtype=jnp.float32, platform="cpu")
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    attn_lib.attention(rand((1, 8, 2, 8), 0), rand((1, 8, 2, 8), 1), rand((1, 8, 2, 8), 2),
                       causal=True, q_segment_ids=jnp.ones((1, 8), jnp.int32))


def _splash_inputs(b=2, t=256, h=4, kvh=2, d=64):
  return rand((b, t, h, d), 0), rand((b, t, kvh, d), 1), rand((b, t, kvh, d), 2), packed_segments(b, t, 1)


def test_splash_interpret_matches_xla_with_segments_gqa_and_grads():
  """The Pallas splash kernel (interpreted on CPU) agrees with xla in value and gradient."""
  q, k, v, seg = _splash_inputs()
  kw = dict(causal=True, q_segment_ids=seg, kv_segment_ids=seg)

  def loss(impl):
    def f(q, k, v):
      o = attn_lib.attention(q, k, v, impl=impl, **kw)
      return jnp.sum(o * jnp.cos(o)), o
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  (_, o_s), g_s = loss("splash_interpret")(q, k, v)
  (_, o_x), g_x = loss("xla")(q, k, v)
  ref, rows = naive(q, k, v, causal=True, q_seg=seg, kv_seg=seg)
  check(o_s, ref, rows)
  np.testing.assert_allclose(np.asarray(o_s), np.asarray(o_x), atol=1e-5, rtol=1e-5)
  for a, b in zip(g_s, g_x):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_splash_interpret_under_shard_map_with_kv_mask_and_window():
  """On a (data=2, fsdp=2, tensor=2) mesh of CPU devices the kernel runs per shard."""
  q, k, v, _ = _splash_inputs(b=4, t=256)
  mask = jnp.asarray(np.arange(256)[None] < np.array([[256], [200], [130], [256]]))
  kw = dict(causal=True, kv_mask=mask, sliding_window=100)
  mesh = sharding.make_mesh((2, 2, 2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    out = jax.jit(lambda q, k, v: attn_lib.attention(q, k, v, impl="splash_interpret", **kw))(q, k, v)
  ref, rows = naive(q, k, v, causal=True, kv_mask=mask, window=100)
  rows &= np.asarray(mask)  # masked query slots are unspecified
  check(out, ref, rows)


@pytest.mark.skipif(not aot_lib.libtpu_available(), reason="needs libtpu (.venv-tpu)")
def test_splash_lowers_for_a_tpu_topology():
  """Compiles the real (non-interpreted) kernel, forward and backward, for v5e-4."""
  mesh = aot_lib.get_topology_mesh("v5e-4", (1, 4, 1))
  b, t, h, kvh, d = 4, 512, 8, 2, 128
  sd = lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def f(q, k, v, seg):
    o = attn_lib.attention(q, k, v, impl="splash", causal=True, q_segment_ids=seg, kv_segment_ids=seg)
    return jnp.sum(o.astype(jnp.float32))

  # conftest sets jax_default_matmul_precision="highest", which Mosaic rejects for bf16.
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES), \
      jax.default_matmul_precision("default"):
    lowered = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(
        sd((b, t, h, d)), sd((b, t, kvh, d)), sd((b, t, kvh, d)), seg)
    text = lowered.as_text()
    compiled = lowered.compile()
  assert "tpu_custom_call" in text or "tpu_custom_call" in compiled.as_text()


def test_llama_with_splash_matches_xla_packed_and_decode():
  """The decoder's attention call: splash (interpreted) == xla on packed rows; a cached
  decode with impl=splash runs (through xla) and matches the teacher-forced logits."""
  from acformer_jax.config import LLMConfig
  from acformer_jax.models import llama
  cfg = LLMConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_position_embeddings=256)
  b, t = 2, 128
  seg = packed_segments(b, t, 3)
  pos = jnp.asarray(np.concatenate([np.r_[np.arange(c), np.zeros(t - c)][None]
                                    for c in (t, t)]).astype(np.int32))
  emb = rand((b, t, 64), 5)
  xla_model = llama.LlamaModel(cfg, attention="xla")
  params = jax.jit(xla_model.init)(jax.random.key(0), emb[:, :4], pos[:, :4],
                                   jnp.ones((b, 4), bool))["params"]
  kv = jnp.ones((b, t), bool)
  run = lambda impl: jax.jit(lambda e: llama.LlamaModel(cfg, attention=impl).apply(
      {"params": params}, e, pos, kv, segment_ids=seg)[0])(emb)
  a, x = np.asarray(run("splash_interpret")), np.asarray(run("xla"))
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(a[real], x[real], atol=1e-5, rtol=1e-5)
  # Decode: prefill 6 tokens, then 2 steps, with the splash setting; compare with a full pass.
  # (Each call compiled as one program: eagerly every op compiles on its own.)
  m = llama.LlamaModel(cfg, attention="splash_interpret")
  e8, p8 = emb[:, :8], jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (b, 8))
  whole = jax.jit(lambda p, e, q: m.apply({"params": p}, e, q, jnp.ones((b, 8), bool))[0])
  full = np.asarray(whole(params, e8, p8))
  cache = llama.init_cache(cfg, b, 16)
  kvm = jnp.asarray(np.arange(16)[None] < 8).repeat(b, 0)
  prefill = jax.jit(lambda p, e, q, c: m.apply({"params": p}, e, q, kvm, cache=c, cache_index=0))
  decode = jax.jit(lambda p, e, q, c, i: m.apply({"params": p}, e, q, kvm, cache=c, cache_index=i))
  logits, cache = prefill(params, e8[:, :6], p8[:, :6], cache)
  steps = [np.asarray(logits)]
  for i in (6, 7):
    logits, cache = decode(params, e8[:, i:i + 1], p8[:, i:i + 1], cache, jnp.int32(i))
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_model_config_attention_reaches_every_tower():
  from acformer_jax.config import ModelConfig
  from acformer_jax.models import layers
  assert layers.tower_options(ModelConfig(attention="splash"))["attention"] == "splash"
  assert ModelConfig().attention == "xla"

"""models/layers.py remat policies: every policy gives the no-remat gradients, and the
named ones save (or offload) exactly the tagged decoder tensors."""
import functools
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals  # pylint: disable=protected-access

from acformer_jax.config import LLMConfig
from acformer_jax.models import layers, llama

CFG = LLMConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                num_kv_heads=1)
B, T = 2, 6


def _inputs():
  pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  mask = jnp.ones((B, T), bool)
  emb = jnp.asarray(np.random.RandomState(0).randn(B, T, 16), jnp.float32)
  return emb, pos, mask


@functools.lru_cache(maxsize=None)
def _params():
  """One random init (one compiled program) shared by every policy."""
  return jax.jit(llama.LlamaModel(CFG).init)(jax.random.key(0), *_inputs())["params"]


def _loss_fn(policy):
  model = llama.LlamaModel(CFG, remat_policy=policy)
  emb, pos, mask = _inputs()
  return (lambda p: jnp.sum(jnp.tanh(model.apply({"params": p}, emb, pos, mask)[0]))), _params()


def test_named_and_offload_policies_give_the_same_gradients():
  ref_fn, params = _loss_fn("none")
  ref = jax.jit(jax.grad(ref_fn))(params)
  for policy in ("save_named", "offload_named"):
    got = jax.jit(jax.grad(_loss_fn(policy)[0]))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, ref)


def _scan_residuals(policy):
  """Saved residuals stacked by the layer scan, as short type strings (e.g. f32[2,2,6,16])."""
  fn, params = _loss_fn(policy)
  return Counter(a.str_short(short_dtypes=True) for a, src in saved_residuals(fn, params)
                 if "output of scan" in src)


QKV = Counter({"f32[2,2,6,2,8]": 1, "f32[2,2,6,1,8]": 2})  # [layers, B, T, heads, head_dim]
ATTN = Counter({"f32[2,2,6,16]": 1})                        # attn_out [layers, B, T, D]
MLP = Counter({"f32[2,2,6,32]": 2})                         # gate, up [layers, B, T, mlp]


@pytest.mark.parametrize("policy,extra", [("save_qkv", QKV), ("save_qkv_attn", QKV + ATTN),
                                          ("save_named", QKV + ATTN + MLP)])
def test_named_policies_save_exactly_the_tagged_tensors(policy, extra):
  assert _scan_residuals(policy) - _scan_residuals("full") == extra


def test_offload_policy_keeps_the_tagged_tensors_on_the_host():
  got = _scan_residuals("offload_qkv") - _scan_residuals("full")
  assert got == Counter({"f32<host>[2,2,6,2,8]": 1, "f32<host>[2,2,6,1,8]": 2}), got


def test_unknown_policy_is_a_clear_error():
  with pytest.raises(ValueError, match="remat_policy='everything' is not one of"):
    layers.remat_policy("everything")



def _casts_in_scans(jaxpr, found=None, in_scan=False):
  """Counts, inside ``scan`` bodies of ``jaxpr`` (recursively), the plain float32 -> bfloat16
  casts of 2-D values (dense kernels; activations are 3-D or more) and the bitcasts to
  bfloat16 that ``layers.round_to_bf16`` is made of."""
  found = found if found is not None else Counter()
  for eqn in jaxpr.eqns:
    if in_scan and eqn.primitive.name == "convert_element_type":
      aval = eqn.invars[0].aval
      if aval.dtype == jnp.float32 and aval.ndim == 2 and eqn.params["new_dtype"] == jnp.bfloat16:
        found["convert"] += 1
    if in_scan and eqn.primitive.name == "bitcast_convert_type" and \
        eqn.params["new_dtype"] == jnp.bfloat16:
      found["round_to_bf16"] += 1
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jax.extend.core.Jaxpr):
          _casts_in_scans(sub, found, in_scan or eqn.primitive.name == "scan")
  return found


def _bf16_model_loss(cast_kernels: bool, monkeypatch):
  if not cast_kernels:
    monkeypatch.setattr(layers, "_kernel_cast", lambda dtype: (lambda tree: tree))
  model = llama.LlamaModel(CFG, dtype="bfloat16", remat_policy="full")
  pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  mask = jnp.ones((B, T), bool)
  emb = jnp.asarray(np.random.RandomState(0).randn(B, T, 16), jnp.float32)
  # unboxed, as the trainer's state holds them (boxed values pass through the cast unchanged)
  params = nn.unbox(llama.LlamaModel(CFG).init(jax.random.key(0), emb, pos, mask)["params"])
  return (lambda p: jnp.sum(jnp.tanh(model.apply({"params": p}, emb, pos, mask)[0]))), params


def test_round_to_bf16_is_astype_bit_for_bit():
  r = np.random.RandomState(0)
  x = (r.randn(20000) * 10.0 ** r.randint(-40, 38, 20000)).astype(np.float32)
  x = np.concatenate([x, np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4e38, -3.4e38], np.float32)])
  got = np.asarray(jax.jit(layers.round_to_bf16)(x)).view(np.uint16)
  np.testing.assert_array_equal(got, np.asarray(jnp.asarray(x).astype(jnp.bfloat16)).view(np.uint16))
  nan = np.array([np.nan, np.uint32(0x7F800001).view(np.float32)], np.float32)
  assert np.isnan(np.asarray(layers.round_to_bf16(nan), np.float32)).all()
  g = jax.grad(lambda v: jnp.sum(layers.round_to_bf16(v).astype(jnp.float32) * 3.0))(jnp.ones(4))
  np.testing.assert_array_equal(g, np.full(4, 3.0, np.float32))


def test_decoder_casts_its_kernels_per_layer_inside_the_loops(monkeypatch):
  """The bf16 decoder casts every layer's kernels with ``round_to_bf16`` inside the forward
  and the (rematerialised) backward loop, not with a plain ``convert``: XLA:TPU's bf16
  propagation turns the latter into one bf16 copy of the whole stacked weights held through
  both loops (0.75 GiB per chip for 7B on v5e-16, docs/aot.md issue #14). Loss and gradients
  are bit-identical to the plain casts."""
  fn, params = _bf16_model_loss(True, monkeypatch)
  casts = _casts_in_scans(jax.make_jaxpr(jax.grad(fn))(params).jaxpr)
  # 7 kernels per layer (q, k, v, o, gate, up, down): forward + the backward's recomputation
  assert casts == Counter({"round_to_bf16": 14}), casts
  loss, grads = jax.jit(jax.value_and_grad(fn))(params)
  monkeypatch.undo()
  ref_fn, _ = _bf16_model_loss(False, monkeypatch)
  assert _casts_in_scans(jax.make_jaxpr(jax.grad(ref_fn))(params).jaxpr)["convert"] == 14
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(ref_fn))(params)
  np.testing.assert_array_equal(loss, ref_loss)
  jax.tree.map(np.testing.assert_array_equal, grads, ref_grads)

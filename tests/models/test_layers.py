"""models/layers.py remat policies: every policy gives the no-remat gradients, and the
named ones save (or offload) exactly the tagged decoder tensors."""
import functools
from collections import Counter

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

"""Both towers initialised sharded on a (data, fsdp, tensor) = (2, 2, 2) mesh of 8 simulated
CPU devices with the abstract-first pattern (docs/jax_practices.md "adopt" items 1 and 3)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from acformer_jax import sharding
from acformer_jax.config import LLMConfig, VisionConfig
from acformer_jax.models.llama import LlamaModel, cache_logical_spec, init_cache
from acformer_jax.models.vit import VisionTransformer

VISION = VisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                      num_layers=3, num_heads=4, select_layer=-2)
LLM = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2)


def _init_sharded(module, mesh, *args):
  # RBG keys: same pattern, a fraction of threefry's CPU compile time.
  init = functools.partial(module.init, jax.random.key(0, impl="unsafe_rbg"))
  abstract = jax.eval_shape(init, *args)
  shardings = sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh)
  variables = jax.jit(init, out_shardings=shardings)(*args)
  return nn.unbox(variables), nn.unbox(shardings)


def _assert_mostly_sharded(params):
  specs = {"/".join(str(k.key) for k in p): leaf.sharding.spec
           for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  sharded = [k for k, s in specs.items() if any(a is not None for a in s)]
  assert sharded, "every parameter is replicated"
  total = sum(x.size for x in jax.tree.leaves(params))
  per_device = sum(x.addressable_shards[0].data.size for x in jax.tree.leaves(params))
  assert per_device < total / 2, (per_device, total)
  return specs


def _run(mesh, fn, *args):
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    return jax.jit(fn)(*args)


def test_vit_sharded_init_and_forward():
  mesh = sharding.make_mesh((2, 2, 2))
  model = VisionTransformer(VISION)
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 3))
  variables, _ = _init_sharded(model, mesh, images)
  specs = _assert_mostly_sharded(variables["params"])
  assert specs["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
  assert specs["unused_layers/mlp/fc2/kernel"] == P(None, "tensor", "fsdp")
  feats, cls_attn = _run(mesh, model.apply, variables, images)
  ref_feats, ref_attn = jax.jit(model.apply)(jax.device_get(variables), images)
  assert feats.shape == (4, 5, 32) and cls_attn.shape == (4, 4, 4)
  np.testing.assert_allclose(np.asarray(feats), np.asarray(ref_feats), atol=1e-5)
  np.testing.assert_allclose(np.asarray(cls_attn), np.asarray(ref_attn), atol=1e-5)


def test_llama_sharded_init_forward_and_cache():
  mesh = sharding.make_mesh((2, 2, 2))
  model = LlamaModel(LLM)
  embeds = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 32))
  positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (4, 6))
  kv_mask = jnp.ones((4, 6), bool)
  variables, _ = _init_sharded(model, mesh, embeds, positions, kv_mask)
  specs = _assert_mostly_sharded(variables["params"])
  assert specs["embed_tokens/embedding"] == P("tensor", "fsdp")
  assert specs["lm_head/kernel"] == P("fsdp", "tensor")
  logits, _ = _run(mesh, model.apply, variables, embeds, positions, kv_mask)
  ref, _ = jax.jit(model.apply)(jax.device_get(variables), embeds, positions, kv_mask)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5)
  # The KV cache shards by its own logical axes and decoding runs sharded.
  cache_sh = sharding.logical_to_sharding(cache_logical_spec(), mesh)
  cache = jax.device_put(init_cache(LLM, 4, 8), cache_sh)
  assert cache["k"].sharding.spec == P(None, ("data", "fsdp"), "tensor", None, None)  # heads before slots
  step = lambda v, c: model.apply(v, embeds, positions, jnp.ones((4, 8), bool), c, 0)
  logits, cache = _run(mesh, step, variables, cache)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5)

"""LlamaModel vs transformers LlamaForCausalLM (spec docs/method.md 3.1): full forward with
right padding, and prefill + token-by-token decode through the KV cache."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tiny_hf
from acformer_jax.conversion import llm_config_from_hf, load_hf_llama
from acformer_jax.models.llama import LlamaModel, init_cache, rope_inv_freq

LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)
CONFIGS = {
    # name: (transformers overrides, save format)
    "gqa_theta1e4_untied": (dict(rope_theta=10000.0), "safetensors"),
    "mqa_theta5e5_linear_tied": (dict(num_key_value_heads=1, rope_theta=500000.0,
                                      rope_scaling=dict(rope_type="linear", factor=2.0),
                                      tie_word_embeddings=True), "sharded"),
    "gqa_llama3_headdim16": (dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                                  rope_theta=500000.0, rope_scaling=LLAMA3), "bin"),
}
TOL = 2e-4
T = 12


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def llama(request, tmp_path_factory):
  overrides, fmt = CONFIGS[request.param]
  model = tiny_hf.tiny_llama(seed=len(request.param), **overrides)
  directory = tiny_hf.save(model, tmp_path_factory.mktemp(request.param), fmt)
  cfg, params = load_hf_llama(directory)
  ids = torch.randint(3, 64, (2, T), generator=torch.Generator().manual_seed(2))
  return model, cfg, params, ids


def _torch_logits(model, ids, mask=None):
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask).logits.numpy()


def test_config_translation(llama):
  model, cfg, _, _ = llama
  hf = model.config
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.num_layers) == (
      hf.num_attention_heads, hf.num_key_value_heads, hf.num_hidden_layers)
  assert cfg.tie_word_embeddings == hf.tie_word_embeddings
  assert cfg.rope_theta == hf.rope_parameters["rope_theta"]
  # Our inverse frequencies equal transformers' rotary buffer.
  np.testing.assert_allclose(rope_inv_freq(cfg), model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


def test_full_forward_with_right_padding(llama):
  model, cfg, params, ids = llama
  mask = torch.ones(2, T, dtype=torch.long)
  mask[1, T - 4:] = 0  # right padding in the second row
  ref = _torch_logits(model, ids, mask)
  lm = LlamaModel(cfg)

  @jax.jit
  def forward(params, ids, mask):
    embeds = lm.apply({"params": params}, ids, method=lm.embed)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), ids.shape)
    return lm.apply({"params": params}, embeds, positions, mask.astype(bool))[0]

  got = np.asarray(forward(params, ids.numpy().astype(np.int32), mask.numpy()))
  np.testing.assert_allclose(got[0], ref[0], atol=TOL, rtol=0)
  np.testing.assert_allclose(got[1, :T - 4], ref[1, :T - 4], atol=TOL, rtol=0)
  # A fully unmasked second row would differ: the padding mask is really applied.
  assert np.abs(got[1, T - 4:] - _torch_logits(model, ids)[1, T - 4:]).max() > 100 * TOL


def test_prefill_then_decode_matches_full_forward(llama):
  """Row 0 unpadded; row 1 left-padded by 2 slots (kv_mask False, positions shifted)."""
  model, cfg, params, ids = llama
  lm, pad, prefill = LlamaModel(cfg), 2, 5
  ids = ids.numpy().astype(np.int32)
  ids[1, :pad] = 0
  kv_mask = np.ones((2, T), bool)
  kv_mask[1, :pad] = False
  positions = np.stack([np.arange(T), np.maximum(np.arange(T) - pad, 0)]).astype(np.int32)
  ref0 = _torch_logits(model, torch.from_numpy(ids[:1]).long())[0]
  ref1 = _torch_logits(model, torch.from_numpy(ids[1:, pad:]).long())[0]

  @jax.jit
  def step(params, cache, ids, positions, index):
    embeds = lm.apply({"params": params}, ids, method=lm.embed)
    return lm.apply({"params": params}, embeds, positions, jnp.asarray(kv_mask), cache, index)

  cache = init_cache(cfg, 2, T)
  logits, cache = step(params, cache, ids[:, :prefill], positions[:, :prefill], jnp.int32(0))
  outs = [np.asarray(logits)]
  for i in range(prefill, T):
    logits, cache = step(params, cache, ids[:, i:i + 1], positions[:, i:i + 1], jnp.int32(i))
    outs.append(np.asarray(logits))
  got = np.concatenate(outs, axis=1)
  assert cache["k"].shape == (cfg.num_layers, 2, cfg.num_kv_heads, T, cfg.resolved_head_dim)
  np.testing.assert_allclose(got[0], ref0, atol=TOL, rtol=0)
  np.testing.assert_allclose(got[1, pad:], ref1, atol=TOL, rtol=0)


def test_unrolled_and_remat_match_scan_with_gradients():
  """``scan_layers=False`` gives the same logits; remat gives the same gradients and is
  really in the program for every policy."""
  cfg = llm_config_from_hf(tiny_hf.tiny_llama(seed=7).config.to_dict())
  base = LlamaModel(cfg)
  embeds = jax.random.normal(jax.random.PRNGKey(0), (2, 6, cfg.hidden_size))
  positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
  kv_mask = jnp.ones((2, 6), bool)
  params = tiny_hf.random_params(
      jax.eval_shape(base.init, jax.random.PRNGKey(0), embeds, positions, kv_mask), seed=1)

  def grad_fn(module):
    return jax.value_and_grad(
        lambda p: jnp.mean(module.apply(p, embeds, positions, kv_mask)[0] ** 2))

  unrolled = dataclasses.replace(base, scan_layers=False)
  np.testing.assert_allclose(
      jax.jit(unrolled.apply)(params, embeds, positions, kv_mask)[0],
      jax.jit(base.apply)(params, embeds, positions, kv_mask)[0], atol=1e-6)
  ref_loss, ref_grad = jax.jit(grad_fn(base))(params)
  got_loss, got_grad = jax.jit(grad_fn(dataclasses.replace(base, remat_policy="full")))(params)
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5),
               got_grad, ref_grad)
  marks = {"none": None, "full": "nothing_saveable", "minimal": "only_if_no_batch_dims=True",
           "dots": "only_if_no_batch_dims=False"}
  for policy, mark in marks.items():
    for scan in (True, False):
      module = dataclasses.replace(base, remat_policy=policy, scan_layers=scan)
      jaxpr = str(jax.make_jaxpr(lambda p, m=module: m.apply(p, embeds, positions, kv_mask))(params))
      assert ("policy=" in jaxpr) == (mark is not None) and (mark or "") in jaxpr, (policy, scan)
  with pytest.raises(ValueError, match="remat_policy='most'"):
    dataclasses.replace(base, remat_policy="most").init(jax.random.PRNGKey(0), embeds, positions,
                                                        kv_mask)


def test_param_tree_layout():
  model = tiny_hf.tiny_llama(seed=3, tie_word_embeddings=True)
  cfg = llm_config_from_hf(model.config.to_dict())
  shapes = jax.eval_shape(LlamaModel(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 1, 32)),
                          jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))["params"]
  specs = nn.get_partition_spec(shapes)
  assert "lm_head" not in shapes
  assert shapes["embed_tokens"]["embedding"].value.shape == (64, 32)
  assert shapes["layers"]["self_attn"]["k_proj"]["kernel"].value.shape == (2, 32, 16)
  assert tuple(specs["layers"]["self_attn"]["k_proj"]["kernel"]) == ("layers", "embed", "kv_heads")
  assert tuple(specs["layers"]["mlp"]["down_proj"]["kernel"]) == ("layers", "mlp", "embed")

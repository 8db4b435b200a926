"""Connectors (docs/method.md 1.4-1.8): torch parity of the Anchor Former and the C-Abstractor,
numpy references for the direct connectors, shape / gradient / determinism for all.

Every test of one connector type shares a single compiled ``(output, gradient)`` function
(``_run``), so each type compiles once.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.special import erf

from acformer_jax import config as C
from acformer_jax.models import Connector, connectors

import tiny_hf
import torch_reference as ref

VISION = C.VisionConfig(image_size=112, patch_size=14, hidden_size=32, intermediate_size=64,
                        num_layers=2, num_heads=4)            # 8x8 = 64 patches, 4 heads
LLM = C.LLMConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_layers=1,
                  num_heads=4, num_kv_heads=4)
CONN = C.ConnectorConfig(num_queries=16, depth=2, heads=2, dim_head=16, ff_mult=2,
                         abstractor_depth=2)
# c_abstractor: 8x8 -> 3x3 exercises uneven adaptive windows; top_p: 18 // 4 heads = 4 each.
# The resampler itself is checked against torch (acformer, depth 2); the other resampler
# baselines use one layer to keep compiles short.
OVERRIDES = {"c_abstractor": dict(num_queries=9), "top_p": dict(num_queries=18),
             "pooling_pr": dict(depth=1), "random_pr": dict(depth=1), "pr": dict(depth=1)}
B = 2


def _config(kind, **kw):
  kw = {**OVERRIDES.get(kind, {}), **kw}
  return C.ModelConfig(vision=VISION, llm=LLM, connector=dataclasses.replace(CONN, type=kind, **kw))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((B, VISION.num_patches + 1, VISION.hidden_size)).astype(np.float32)
  logits = rng.standard_normal((B, VISION.num_heads, VISION.num_patches)) * 2
  attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return feats, attn.astype(np.float32)


def _params(cfg, seed=0):
  """Random params from the abstract tree (no PRNG kernels to compile)."""
  feats, attn = _inputs()
  key = jax.random.key(0)
  abstract = jax.eval_shape(lambda: Connector(cfg).init(key, feats, attn, rng=key))
  return tiny_hf.random_params(abstract, seed)["params"]


@functools.lru_cache(maxsize=None)
def _runner(cfg):
  """Jitted ``(params, feats, attn, key) -> (grads of <out, probe>, out)`` for ``cfg``."""

  def loss(p, feats, attn, key):
    out = Connector(cfg).apply({"params": p}, feats, attn, rng=key)
    probe = jnp.sin(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    return jnp.sum(out * probe), out

  return jax.jit(jax.grad(loss, has_aux=True))


def _run(cfg, params, feats, attn, seed=0):
  grads, out = _runner(cfg)(params, feats, attn, jax.random.key(seed))
  return grads, np.asarray(out)


def _mlp_np(x, proj):
  proj = jax.tree.map(lambda a: np.asarray(a, np.float64), proj)
  h = x.astype(np.float64) @ proj["linear_1"]["kernel"] + proj["linear_1"]["bias"]
  h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
  return h @ proj["linear_2"]["kernel"] + proj["linear_2"]["bias"]


def test_acformer_matches_torch_reference():
  torch.manual_seed(0)
  cfg = _config("acformer")
  c = cfg.connector
  proj = ref.acformer_projector(VISION.hidden_size, LLM.hidden_size, depth=c.depth,
                                dim_head=c.dim_head, heads=c.heads, ff_mult=c.ff_mult)
  with torch.no_grad():  # non-trivial LayerNorms so a swapped norm would show
    for name, p in proj.named_parameters():
      if "norm" in name or ".1.0." in name:
        p.add_(0.3 * torch.randn_like(p))
  sd = {"model.mm_projector." + k: v for k, v in proj.state_dict().items()}
  params = ref.flax_params_from_official(sd, c.depth, prefix="model.mm_projector.")
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, _params(cfg))
  feats, attn = _inputs(1)
  _, got = _run(cfg, params, feats, attn)
  with torch.no_grad():
    want = ref.acformer_connector(proj, torch.from_numpy(feats), torch.from_numpy(attn),
                                  c.num_queries).numpy()
  assert got.shape == want.shape == (B, 17, LLM.hidden_size)
  print(f"acformer max abs diff vs torch: {np.abs(got - want).max():.2e}")
  assert np.abs(got - want).max() <= 1e-4


def test_c_abstractor_matches_torch_reference():
  torch.manual_seed(1)
  cfg = _config("c_abstractor")
  c = cfg.connector
  ref_mod = ref.CAbstractorConnector(VISION.hidden_size, LLM.hidden_size, c.abstractor_depth,
                                     3).eval()
  with torch.no_grad():  # non-trivial norms and SE biases
    for name, p in ref_mod.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.3 * torch.randn_like(p))
  params = ref.flax_params_from_c_abstractor(ref_mod)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, _params(cfg))
  feats, attn = _inputs(9)
  _, got = _run(cfg, params, feats, attn)
  with torch.no_grad():
    want = ref_mod(torch.from_numpy(feats)).numpy()
  assert got.shape == want.shape == (B, 9, LLM.hidden_size)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_official_key_map_names_missing_keys():
  sd = {"model.mm_projector.1.weight": torch.zeros(2, 2)}
  with pytest.raises(KeyError, match="model.mm_projector.0.layers.0.0.to_kv.weight"):
    ref.flax_params_from_official(sd, 1, prefix="model.mm_projector.")


def test_mlp2x_gelu_matches_numpy():
  cfg = _config("mlp2x_gelu")
  params = _params(cfg, seed=2)
  feats, attn = _inputs(2)
  _, got = _run(cfg, params, feats, attn)
  assert got.shape == (B, VISION.num_patches, LLM.hidden_size)
  np.testing.assert_allclose(got, _mlp_np(feats[:, 1:], params["projector"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [16, 9])   # 8x8 -> 4x4 (2x2 windows), 8x8 -> 3x3 (adaptive)
def test_pooling_matches_numpy_and_torch_adaptive_pool(budget):
  cfg = _config("pooling", num_queries=budget)
  params = _params(cfg, seed=3)
  feats, attn = _inputs(3)
  _, got = _run(cfg, params, feats, attn)
  g, side = VISION.grid_size, int(np.sqrt(budget))
  grid = feats[:, 1:].reshape(B, g, g, -1).astype(np.float64)
  if g % side == 0:
    w = g // side
    pooled = grid.reshape(B, side, w, side, w, -1).mean(axis=(2, 4))
  else:
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(grid).permute(0, 3, 1, 2), side).permute(0, 2, 3, 1).numpy()
  tokens = np.concatenate([feats[:, :1], pooled.reshape(B, budget, -1)], axis=1)
  assert got.shape == (B, budget + 1, LLM.hidden_size)
  np.testing.assert_allclose(got, _mlp_np(tokens, params["projector"]), atol=1e-5, rtol=1e-5)


def test_top_p_matches_numpy():
  cfg = _config("top_p")   # 18 // 4 heads = 4 per head -> 17 tokens
  params = _params(cfg, seed=4)
  feats, attn = _inputs(4)
  _, got = _run(cfg, params, feats, attn)
  tokens = np.stack([feats[b, ref.official_select(attn[b], 18)] for b in range(B)])
  assert got.shape == (B, 17, LLM.hidden_size)
  np.testing.assert_allclose(got, _mlp_np(tokens, params["projector"]), atol=1e-5, rtol=1e-5)


def test_evit_matches_numpy():
  cfg = _config("evit")
  params = _params(cfg, seed=5)
  feats, attn = _inputs(5)
  _, got = _run(cfg, params, feats, attn)
  score = attn.astype(np.float64).mean(axis=1)
  tokens = []
  for b in range(B):
    order = np.argsort(-score[b])
    keep, rest = order[:16], order[16:]
    fused = (score[b, rest, None] * feats[b, 1 + rest]).sum(0)
    tokens.append(np.concatenate([feats[b, :1], feats[b, 1 + keep], fused[None]]))
  assert got.shape == (B, 18, LLM.hidden_size)
  np.testing.assert_allclose(got, _mlp_np(np.stack(tokens), params["projector"]),
                             atol=1e-5, rtol=1e-5)


def test_resampler_follows_the_model_remat_policy():
  """``ModelConfig.remat_policy`` reaches the resampler's layer scan (a trained connector would
  otherwise keep every layer's activations for the backward): same output and gradients."""
  base = _config("acformer")
  params = _params(base, seed=3)
  feats, attn = _inputs(3)
  grads, out = _run(base, params, feats, attn)
  full = dataclasses.replace(base, remat_policy="full")
  forward = lambda cfg: str(jax.make_jaxpr(  # noqa: E731
      lambda p: Connector(cfg).apply({"params": p}, feats, attn))(params))
  assert "remat" in forward(full) and "remat" not in forward(base)  # jax.checkpoint
  grads_full, out_full = _run(full, params, feats, attn)
  np.testing.assert_allclose(out_full, out, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grads_full, grads)


@pytest.mark.parametrize("kind", C.connector_types())
def test_shape_gradient_flow_and_determinism(kind):
  cfg = _config(kind)
  params = _params(cfg, seed=6)
  feats, attn = _inputs(6)
  grads, out = _run(cfg, params, feats, attn, seed=0)
  grads2, out2 = _run(cfg, params, feats, attn, seed=0)
  assert out.shape == (B, C.num_visual_tokens(cfg), LLM.hidden_size)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out, out2)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:  # every param gets gradient
    assert np.abs(np.asarray(g)).max() > 0, (kind, jax.tree_util.keystr(path))
  jax.tree.map(np.testing.assert_array_equal, grads, grads2)
  _, out3 = _run(cfg, params, feats, attn, seed=1)
  if kind == "random_pr":   # the step's key picks the query tokens
    assert np.abs(out - out3).max() > 1e-3
  else:
    np.testing.assert_array_equal(out, out3)


def test_paper_token_budgets():
  full = C.ModelConfig()   # ViT-L/14-336: 576 patches, 16 heads
  counts = {}
  for kind in C.connector_types():
    for k in (64, 144, 256):
      counts[kind, k] = C.num_visual_tokens(dataclasses.replace(
          full, connector=C.ConnectorConfig(type=kind, num_queries=k)))
  for kind in ("pooling", "pooling_pr", "random_pr", "pr", "top_p", "acformer"):
    assert [counts[kind, k] for k in (64, 144, 256)] == [65, 145, 257], kind
  assert [counts["c_abstractor", k] for k in (64, 144, 256)] == [64, 144, 256]  # no CLS
  assert counts["evit", 144] == 146
  assert counts["mlp2x_gelu", 144] == counts["linear", 144] == 576


def test_bad_inputs_raise_clear_errors():
  feats, attn = _inputs(8)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="perfect square"):
    jax.eval_shape(lambda: Connector(_config("pooling", num_queries=10)).init(key, feats, attn))
  with pytest.raises(ValueError, match="cls_attn"):
    jax.eval_shape(lambda: Connector(_config("acformer")).init(key, feats, attn[:, :2]))
  with pytest.raises(ValueError, match="not one of"):
    C.num_visual_tokens(_config("qformer"))
  assert connectors.validate(_config("pooling", num_queries=10))


def test_random_pr_without_rng_is_one_fixed_draw():
  """Inference (no rng): the same patches for every image, whatever the batch."""
  cfg = _config("random_pr")
  params = _params(cfg, seed=8)
  feats, attn = _inputs(8)
  apply = jax.jit(lambda p, f, a: Connector(cfg).apply({"params": p}, f, a))
  both = np.asarray(apply(params, feats, attn))
  one = np.asarray(apply(params, feats[1:], attn[1:]))
  np.testing.assert_allclose(both[1:], one, atol=1e-6, rtol=0)
  np.testing.assert_array_equal(both, np.asarray(apply(params, feats, attn)))
  idx = np.asarray(connectors.random_token_indices(None, 3, 64, 16))
  assert (idx == idx[:1]).all() and idx[0, 0] == 0 and len(set(idx[0])) == 17


def _layer_norm_np(x, scale, bias, eps=connectors.INPUT_NORM_EPS):
  x = x.astype(np.float64)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "acformer"])
def test_input_norm_is_a_layer_norm_before_the_connector(kind):
  """``connector.input_norm``: the connector sees LayerNorm(features) (its own trained scale and
  bias), anchors are gathered from the normalised tokens, and the default keeps the official
  parameter layout (no ``input_norm``)."""
  cfg = _config(kind, input_norm=True)
  params = _params(cfg, seed=4)
  assert set(params["input_norm"]) == {"scale", "bias"}
  assert "input_norm" not in _params(_config(kind), seed=4)
  feats, attn = _inputs(4)
  feats = 0.05 * feats + 0.3          # DINOv2-like: small and offset
  _, got = _run(cfg, params, feats, attn)
  normed = _layer_norm_np(feats, params["input_norm"]["scale"], params["input_norm"]["bias"])
  rest = {k: v for k, v in params.items() if k != "input_norm"}
  _, want = _run(_config(kind), rest, normed.astype(np.float32), attn)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  if kind == "mlp2x_gelu":
    np.testing.assert_allclose(got, _mlp_np(normed[:, 1:], params["projector"]), atol=1e-5,
                               rtol=1e-5)

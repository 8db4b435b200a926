"""VisionTransformer vs transformers CLIPVisionModel (spec docs/method.md 3.2, 2.8, 1.2)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tiny_hf
from acformer_jax.config import VisionConfig
from acformer_jax.conversion import load_hf_clip_vision
from acformer_jax.models.vit import VisionTransformer

CONFIGS = {
    "56px_2layers": dict(image_size=56, layers=2, heads=4, hidden=32, inter=64),
    "84px_3layers": dict(image_size=84, layers=3, heads=2, hidden=32, inter=48),
    "112px_4layers": dict(image_size=112, layers=4, heads=4, hidden=48, inter=64),
}
TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def clip(request, tmp_path_factory):
  """(checkpoint dir, torch hidden states, torch attentions, NHWC pixels)."""
  kw = CONFIGS[request.param]
  model = tiny_hf.tiny_clip_vision(seed=len(request.param), **kw)
  directory = tiny_hf.save(model, tmp_path_factory.mktemp(request.param))
  s = kw["image_size"]
  pixels = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    out = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
  assert len(out.attentions) == kw["layers"]
  return (directory, [h.numpy() for h in out.hidden_states], [a.numpy() for a in out.attentions],
          pixels.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("select_layer", [-1, -2, 1])
def test_matches_torch_at_select_layer(clip, select_layer):
  directory, hidden, attn, pixels = clip
  cfg, params = load_hf_clip_vision(directory, select_layer=select_layer)
  feats, cls_attn = jax.jit(VisionTransformer(cfg).apply)({"params": params}, pixels)
  block = cfg.num_computed_layers  # 1-based block whose output is hidden[select_layer]
  np.testing.assert_allclose(np.asarray(feats), hidden[select_layer], atol=TOL, rtol=0)
  want_attn = attn[block - 1][:, :, 0, 1:]
  assert cls_attn.shape == want_attn.shape == (2, cfg.num_heads, cfg.num_patches)
  np.testing.assert_allclose(np.asarray(cls_attn), want_attn, atol=TOL, rtol=0)
  # The probe is sharp enough to tell neighbouring layers apart.
  other = hidden[select_layer - 1] if select_layer != 1 else hidden[2]
  assert np.abs(np.asarray(feats) - other).max() > 100 * TOL


def test_param_tree_keeps_unused_blocks():
  cfg = VisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32,
                     num_layers=4, num_heads=2, select_layer=-2)
  shapes = jax.eval_shape(VisionTransformer(cfg).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 28, 28, 3)))["params"]
  shapes = jax.tree.map(lambda x: x.shape, shapes)
  assert shapes["layers"]["self_attn"]["q_proj"]["kernel"].value == (3, 16, 16)
  assert shapes["unused_layers"]["mlp"]["fc1"]["kernel"].value == (1, 16, 32)
  assert shapes["post_layernorm"]["scale"].value == (16,)
  assert shapes["embeddings"]["patch_embedding"]["kernel"].value == (14, 14, 3, 16)
  assert shapes["embeddings"]["position_embedding"].value == (5, 16)


def test_unrolled_and_remat_match_scan():
  cfg = VisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32,
                     num_layers=3, num_heads=2, select_layer=-1)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 3))
  base = VisionTransformer(cfg)
  params = tiny_hf.random_params(jax.eval_shape(base.init, jax.random.PRNGKey(0), x), seed=0)
  ref = jax.jit(base.apply)(params, x)
  alt = VisionTransformer(cfg, scan_layers=False, remat_policy="full")
  alt_shapes = jax.eval_shape(alt.init, jax.random.PRNGKey(0), x)
  assert jax.tree.map(lambda a: a.shape, nn.unbox(alt_shapes)) == jax.tree.map(
      lambda a: a.shape, params)
  got = jax.jit(alt.apply)(params, x)
  for r, g in zip(ref, got):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-6)


def test_rejects_wrong_image_size():
  cfg = VisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32,
                     num_layers=1, num_heads=2, select_layer=-1)
  with pytest.raises(ValueError, match=r"pixel_values \[B,28,28,3\]"):
    VisionTransformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 28, 28)))

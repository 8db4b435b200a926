"""SigLIP and DINOv2 towers vs transformers (fp32, tiny random configs), the registry."""
import jax
import numpy as np
import pytest
import torch
import transformers

import tiny_hf
from acformer_jax import config as C
from acformer_jax.conversion.towers import load_hf_vision
from acformer_jax.models import towers
from acformer_jax.models.dinov2 import bicubic_matrix
from acformer_jax.models.towers import tower

TOL = 1e-4


def _run(directory, pixels, select_layer, **overrides):
  cfg, params = load_hf_vision(directory, select_layer=select_layer)
  if overrides:
    import dataclasses  # pylint: disable=import-outside-toplevel
    cfg = dataclasses.replace(cfg, **overrides)
  feats, anchor = jax.jit(tower(cfg.tower).module(cfg).apply)({"params": params}, pixels)
  return cfg, np.asarray(feats), np.asarray(anchor)


def _hf(model, pixels):
  with torch.no_grad():
    return model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
                 output_hidden_states=True, output_attentions=True)


def tiny_siglip(seed=0, use_head=True, image_size=32, patch=8, layers=3):
  cfg = transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
      image_size=image_size, patch_size=patch, vision_use_head=use_head)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  return tiny_hf.randomize_(transformers.SiglipVisionModel(cfg), seed)


def tiny_dinov2(seed=0, registers=0, image_size=56, layers=3):
  kw = dict(hidden_size=32, mlp_ratio=2, num_hidden_layers=layers, num_attention_heads=4,
            image_size=image_size, patch_size=14)
  if registers:
    cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
    cls = transformers.Dinov2WithRegistersModel
  else:
    cfg, cls = transformers.Dinov2Config(**kw), transformers.Dinov2Model
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  model = tiny_hf.randomize_(cls(cfg), seed)
  with torch.no_grad():  # layer scales away from 1 so a missing one shows
    for name, p in model.named_parameters():
      if "lambda1" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=torch.Generator().manual_seed(seed)))
  return model


def _pixels(size, seed=1, batch=2):
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("select_layer", [-1, -2])
def test_siglip_matches_transformers(tmp_path, select_layer):
  model = tiny_siglip()
  d = tiny_hf.save(model, tmp_path)
  x = _pixels(32)
  out = _hf(model, x)
  cfg, feats, anchor = _run(d, x, select_layer, anchor_source="received")
  assert cfg.tower == "siglip" and cfg.use_head
  want = out.hidden_states[select_layer].numpy()
  np.testing.assert_allclose(feats[:, 1:], want, atol=TOL, rtol=0)
  np.testing.assert_allclose(feats[:, 0], want.mean(axis=1), atol=TOL, rtol=0)
  attn = out.attentions[cfg.num_computed_layers - 1].numpy()        # [B,H,N,N]
  np.testing.assert_allclose(anchor, attn.mean(axis=2), atol=TOL, rtol=0)


def test_siglip_probe_anchor_is_the_pooling_head_attention(tmp_path):
  model = tiny_siglip(seed=3)
  d = tiny_hf.save(model, tmp_path)
  x = _pixels(32, seed=4)
  out = _hf(model, x)
  with torch.no_grad():
    last = out.last_hidden_state  # post_layernorm, as the head sees it
    probe = model.head.probe.repeat(x.shape[0], 1, 1)
    _, w = model.head.attention(probe, last, last, need_weights=True, average_attn_weights=False)
  cfg, _, anchor = _run(d, x, -2)
  assert towers.tower("siglip").validate(cfg) == []
  want = w[:, :, 0].numpy()                                          # [B, H, N]
  assert anchor.shape == want.shape == (2, 4, 16)
  np.testing.assert_allclose(anchor, want, atol=TOL, rtol=0)
  assert np.abs(want - want.mean(axis=-1, keepdims=True)).max() > 0.01  # not uniform


def test_siglip_without_head_uses_received_attention(tmp_path):
  model = tiny_siglip(seed=5, use_head=False)
  d = tiny_hf.save(model, tmp_path)
  x = _pixels(32, seed=6)
  out = _hf(model, x)
  cfg, _, anchor = _run(d, x, -1)
  assert not cfg.use_head
  np.testing.assert_allclose(anchor, out.attentions[-1].numpy().mean(axis=2), atol=TOL, rtol=0)


@pytest.mark.parametrize("registers,size,select_layer", [(0, 56, -2), (0, 42, -1), (0, 84, 1),
                                                         (2, 56, -2), (2, 28, -1)])
def test_dinov2_matches_transformers(tmp_path, registers, size, select_layer):
  """Native grid, interpolated down and up, with and without registers."""
  model = tiny_dinov2(seed=registers + size, registers=registers)
  d = tiny_hf.save(model, tmp_path)
  x = _pixels(size, seed=size)
  out = _hf(model, x)
  cfg, feats, anchor = _run(d, x, select_layer, image_size=size)
  assert cfg.tower == "dinov2" and cfg.position_grid == 4 and cfg.num_register_tokens == registers
  want = out.hidden_states[select_layer].numpy()
  keep = np.r_[0, np.arange(1 + registers, want.shape[1])]
  np.testing.assert_allclose(feats, want[:, keep], atol=TOL, rtol=0)
  attn = out.attentions[cfg.num_computed_layers - 1].numpy()
  np.testing.assert_allclose(anchor, attn[:, :, 0, 1 + registers:], atol=TOL, rtol=0)


@pytest.mark.parametrize("n_in,n_out", [(37, 16), (4, 3), (4, 6), (16, 37), (5, 5)])
@pytest.mark.parametrize("antialias", [False, True])
def test_bicubic_matrix_matches_torch(n_in, n_out, antialias):
  g = torch.Generator().manual_seed(n_in * 100 + n_out)
  x = torch.randn(1, 1, n_in, n_in, generator=g, dtype=torch.float64)
  want = torch.nn.functional.interpolate(x, size=(n_out, n_out), mode="bicubic",
                                         align_corners=False, antialias=antialias)[0, 0].numpy()
  m = bicubic_matrix(n_in, n_out, antialias)
  np.testing.assert_allclose(m @ x[0, 0].numpy() @ m.T, want, atol=1e-10, rtol=0)


def test_registry_rejects_unknown_tower():
  with pytest.raises(ValueError, match="known"):
    tower("nope")
  assert towers.validate(C.VisionConfig(tower="nope"))
  assert towers.validate(C.VisionConfig(tower="dinov2", use_head=True))
  assert towers.validate(C.VisionConfig(tower="siglip", anchor_source="probe"))
  assert not towers.validate(C.VisionConfig())


@pytest.mark.parametrize("name", ["clip", "siglip", "dinov2"])
def test_hf_config_round_trip(name):
  vc = {"clip": C.VisionConfig(image_size=56, patch_size=14, hidden_size=32,
                               intermediate_size=64, num_layers=2, num_heads=4),
        "siglip": C.VisionConfig(tower="siglip", image_size=32, patch_size=16, hidden_size=32,
                                 intermediate_size=64, num_layers=2, num_heads=4,
                                 layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                 use_head=True),
        "dinov2": C.VisionConfig(tower="dinov2", image_size=56, patch_size=14, hidden_size=32,
                                 intermediate_size=128, num_layers=2, num_heads=4,
                                 layer_norm_eps=1e-6, hidden_act="gelu", position_grid=4)}[name]
  t = tower(name)
  d = t.to_hf_config(vc)
  assert towers.tower_for_hf(d) is t
  back = t.from_hf_config(d, vc.select_layer)
  if name == "clip":
    vc = C.VisionConfig(**{**vc.__dict__, "hidden_act": ""})
  assert back == vc


def test_dinov2_initialises_a_model_at_another_image_size(tmp_path):
  """init.vision=hf_clip:<Dinov2Model dir> with vision.image_size below the checkpoint's."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import initialize  # pylint: disable=import-outside-toplevel
  model = tiny_dinov2(seed=9)
  d = tiny_hf.save(model, tmp_path)
  cfg, _ = load_hf_vision(d, select_layer=-2)
  vc = dataclasses.replace(cfg, image_size=28)  # 2x2 patches from the stored 4x4 grid
  mc = C.ModelConfig(vision=vc)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(tower("dinov2").module(vc).init, jax.random.key(0),
                            np.zeros((1, 28, 28, 3), np.float32))["params"]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          nn.unbox(abstract))
  loaded = initialize.load_subtree("vision", {"kind": "hf_clip", "path": str(d)}, abstract, mc)
  x = _pixels(28, seed=2)
  out = _hf(model, x)
  feats, _ = jax.jit(tower("dinov2").module(vc).apply)({"params": loaded}, x)
  np.testing.assert_allclose(np.asarray(feats), out.hidden_states[-2].numpy(), atol=TOL, rtol=0)
  with pytest.raises(ValueError, match="position_grid"):
    initialize.load_subtree("vision", {"kind": "hf_clip", "path": str(d)}, abstract,
                            C.ModelConfig(vision=dataclasses.replace(vc, position_grid=2)))

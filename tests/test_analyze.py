"""Visual-anchor analysis: per-layer outputs vs transformers CLIP, statistics, the CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import tiny_hf
from acformer_jax import analyze
from acformer_jax import config as C
from acformer_jax.analysis import layers, stats
from acformer_jax.conversion import load_hf_clip_vision
from acformer_jax.data import preprocess
from acformer_jax import params_store
from acformer_jax.models.anchors import select_anchors
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.models.vit import VisionTransformer

VISION = C.VisionConfig(image_size=84, patch_size=14, hidden_size=32, intermediate_size=64,
                        num_layers=3, num_heads=2)  # 6x6 patches, anchors from block 2
CONFIG = C.ModelConfig(
    vision=VISION,
    llm=C.LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1,
                    num_heads=4, num_kv_heads=4),
    connector=C.ConnectorConfig(type="acformer", num_queries=8, depth=1, heads=2, dim_head=8,
                                ff_mult=2),
    image_token_id=64)
FIGURES = ("norm_maps", "cls_attention_maps", "cls_attention_heads", "norm_profile", "pca",
           "anchors")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("img") / "scene.png"
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (70, 98, 3), dtype=np.uint8)).save(path)
  return path


@pytest.fixture(scope="module")
def mllm_checkpoint(tmp_path_factory):
  s = VISION.image_size
  abstract = jax.eval_shape(MultimodalLM(CONFIG).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, s, s, 3)), jnp.ones((1, 4), jnp.int32))["params"]
  params = tiny_hf.random_params(abstract, seed=3)
  params["vision"]["pre_layrnorm"]["scale"] = np.ones(32, np.float32)  # well-conditioned
  d = params_store.save(tmp_path_factory.mktemp("ckpt") / "model", params, CONFIG)
  return d, params


def test_all_layers_match_transformers(tmp_path):
  model = tiny_hf.tiny_clip_vision(seed=5, image_size=56, layers=3, heads=4)
  d = tiny_hf.save(model, tmp_path)
  pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    ref = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
  cfg, params = load_hf_clip_vision(d, select_layer=-2)
  hidden, cls_attn = layers.all_layers(cfg, params, pixels.permute(0, 2, 3, 1).numpy())
  assert hidden.shape == (4, 2, 17, 32) and cls_attn.shape == (3, 2, 4, 16)
  for i in range(4):
    np.testing.assert_allclose(hidden[i], ref.hidden_states[i].numpy(), atol=1e-4, rtol=0)
  for i in range(3):
    np.testing.assert_allclose(cls_attn[i], ref.attentions[i][:, :, 0, 1:].numpy(), atol=1e-5,
                               rtol=0)
  # Same as the model's own forward at its select layer (block 2).
  feats, attn = jax.jit(VisionTransformer(cfg).apply)({"params": params},
                                                      pixels.permute(0, 2, 3, 1).numpy())
  np.testing.assert_allclose(hidden[2], feats, atol=1e-5, rtol=0)
  np.testing.assert_allclose(cls_attn[1], attn, atol=1e-6, rtol=0)


def test_stats_on_planted_data():
  norms = np.ones(16)
  norms[[3, 9]] = [5.0, 3.0]
  assert stats.high_norm_tokens(norms, 2.0).tolist() == [3, 9]
  assert stats.high_norm_tokens(norms, 4.0).tolist() == [3]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 1)) * np.array([[10.0, 0, 0, 0]]) + rng.normal(size=(200, 4)) * 0.1
  proj, ev = stats.pca(x, 3)
  assert proj.shape == (200, 3) and ev[0] > 0.99 and np.all(np.diff(ev) <= 0)
  np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), rtol=0.02,
                             atol=0.5)
  assert stats.budgets_for(16, 576) == [(64, 64), (144, 144), (256, 256)]
  assert stats.budgets_for(2, 36) == [(64, 4), (144, 8), (256, 16)]
  assert stats.budgets_for(4, 16) == [(64, 4), (256, 8)]  # 144 scales to 4 again: dropped
  attn = np.zeros((2, 16))
  attn[:, [3, 5]] = 0.5
  o = stats.anchor_overlap(np.array([3, 5]), norms, np.array([3, 9]), attn)
  assert o["high_norm_covered"] == 0.5 and o["anchors_high_norm"] == 0.5
  assert o["top_norm_overlap"] == 0.5 and o["random_expectation"] == 2 / 16
  assert o["cls_attention_mass"] == pytest.approx(1.0)


def test_cli_on_tiny_mllm(mllm_checkpoint, image_file, tmp_path, capsys):
  d, params = mllm_checkpoint
  out = tmp_path / "figs"
  assert analyze.main(["--checkpoint", str(d), "--image", str(image_file), "--out", str(out)]) == 0
  assert "summary.json" in capsys.readouterr().out
  summary = json.loads((out / "summary.json").read_text())
  assert summary["checkpoint_kind"] == "mllm"
  assert set(summary["figures"]) == set(FIGURES)
  for name in summary["figures"].values():
    data = (out / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
  assert [ly["layer"] for ly in summary["layers"]] == [1, 2, 3]
  assert summary["vision"]["selection_block"] == 2
  # Budgets scaled to the 6x6 grid; the connector's own budget (8) is among them.
  assert [b["budget"] for b in summary["budgets"]] == [4, 8, 16]
  # The anchors are exactly what the model's connector would select for this image.
  pixels = preprocess.preprocess_image(str(image_file), 84, pad_to_square=False)
  _, cls_attn = jax.jit(VisionTransformer(VISION).apply)({"params": params["vision"]}, pixels[None])
  for b in summary["budgets"]:
    want = np.asarray(jax.jit(select_anchors, static_argnums=1)(cls_attn, b["budget"]))[0, 1:] - 1
    assert b["anchors"] == want.tolist()
    assert b["num_tokens"] == 1 + b["budget"]
  # High-norm tokens per layer follow the stated rule on the real hidden states.
  hidden, _ = layers.all_layers(VISION, params["vision"], pixels[None])
  for ly in summary["layers"]:
    n = np.linalg.norm(np.asarray(hidden[ly["layer"], 0, 1:], np.float64), axis=-1)
    assert sorted(ly["high_norm_tokens"]) == np.nonzero(n > 2.0 * np.median(n))[0].tolist()
    assert ly["patch_norm_max"] == pytest.approx(n.max(), rel=1e-5)


def test_cli_on_hf_clip_and_select_layer(tmp_path, image_file):
  d = tiny_hf.save(tiny_hf.tiny_clip_vision(seed=2, image_size=56, layers=2, heads=4), tmp_path / "clip")
  s = analyze.analyze(d, image_file, tmp_path / "o", budgets=[4, 8], select_layer=-1)
  assert s["checkpoint_kind"] == "hf_clip"
  assert s["vision"]["selection_block"] == 2
  assert [b["budget"] for b in s["budgets"]] == [4, 8]
  assert all(len(b["anchors"]) == b["budget"] for b in s["budgets"])


def test_clear_errors(tmp_path, image_file, mllm_checkpoint, capsys):
  assert analyze.main(["--checkpoint", str(tmp_path / "nope"), "--image", str(image_file),
                       "--out", str(tmp_path / "o")]) == 2
  assert "does not exist" in capsys.readouterr().err
  (tmp_path / "llama").mkdir()
  (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(ValueError, match="model_type='llama'"):
    analyze.analyze(tmp_path / "llama", image_file, tmp_path / "o")
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image")
  with pytest.raises(ValueError, match="not a readable image"):
    analyze.analyze(mllm_checkpoint[0], bad, tmp_path / "o")
  with pytest.raises(SystemExit):
    analyze.main(["--checkpoint", "x", "--image", "y", "--out", "z", "--budgets", "a,b"])
  assert "--budgets wants comma-separated integers" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # snake_case flags only (one CLI style)
    analyze.main(["--checkpoint", "x", "--image", "y", "--out", "z", "--norm-ratio", "2"])


def test_loads_the_vision_tower_of_a_transformers_llava(tmp_path):
  from acformer_jax.analysis import loading
  from acformer_jax.benchmarking import torch_compare
  hf, patches = torch_compare.hf_model(torch_compare.PRESETS["tiny"])
  hf.save_pretrained(tmp_path)
  ck = loading.load_vision(tmp_path)
  assert ck.kind == "hf_llava" and ck.config.num_patches == patches == 16
  pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    ref = hf.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
  hidden, _ = layers.all_layers(ck.config, ck.params, pixels.permute(0, 2, 3, 1).numpy())
  for i, h in enumerate(ref):
    np.testing.assert_allclose(hidden[i], h.numpy(), atol=1e-4, rtol=0)


# ---- every registered tower, through the tower registry ----------------------------------
def _tower_models():
  from tests.models.test_vision_towers import tiny_dinov2, tiny_siglip
  return tiny_siglip(seed=7, layers=2), tiny_dinov2(seed=8, registers=2, layers=2)


def test_all_layers_of_siglip_and_dinov2_match_transformers(tmp_path):
  """Per-block hidden states and anchor rows of the non-CLIP towers (registers dropped,
  SigLIP's summary token = mean), and SigLIP's probe attention = its pooling head's."""
  from acformer_jax.conversion.towers import load_hf_vision
  for model in _tower_models():
    d = tiny_hf.save(model, tmp_path / type(model).__name__)
    cfg, params = load_hf_vision(d, select_layer=-1)
    s = cfg.image_size
    x = np.random.default_rng(s).standard_normal((2, s, s, 3)).astype(np.float32)
    with torch.no_grad():
      ref = model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True,
                  output_attentions=True)
    run = layers.run_layers(cfg, params, x)
    r = cfg.num_register_tokens
    assert run.hidden.shape[0] == 3 and run.rows.shape == (2, 2, 4, cfg.num_patches)
    for i, h in enumerate(ref.hidden_states):
      h = h.numpy()
      if cfg.tower == "siglip":
        h = np.concatenate([h.mean(1, keepdims=True), h], 1)
      else:
        h = h[:, np.r_[0, np.arange(1 + r, h.shape[1])]]
      np.testing.assert_allclose(run.hidden[i], h, atol=1e-4, rtol=0)
    for i, a in enumerate(ref.attentions):
      a = a.numpy()
      want = a.mean(axis=2) if run.row_kind == "received" else a[:, :, 0, 1 + r:]
      np.testing.assert_allclose(run.rows[i], want, atol=1e-5, rtol=0)
    if cfg.tower == "siglip":
      assert run.row_kind == "received" and run.used == "probe"
      with torch.no_grad():
        probe = model.head.probe.repeat(2, 1, 1)
        last = ref.last_hidden_state
        _, w = model.head.attention(probe, last, last, need_weights=True,
                                    average_attn_weights=False)
      np.testing.assert_allclose(run.extras["probe"], w[:, :, 0].numpy(), atol=1e-5, rtol=0)
    else:
      assert run.row_kind == run.used == "cls" and not run.extras


def test_cli_draws_both_siglip_sources_and_runs_dinov2_at_another_size(tmp_path, image_file):
  from acformer_jax.models import towers
  from acformer_jax.models.siglip import SiglipVisionTower
  siglip, dino = _tower_models()
  d = tiny_hf.save(siglip, tmp_path / "siglip")
  s = analyze.analyze(d, image_file, tmp_path / "o", budgets=[4, 8])
  assert s["checkpoint_kind"] == "hf_siglip" and s["anchor_source"] == "probe"
  assert {"received_attention_maps", "received_attention_heads", "probe_attention_heads",
          "anchors", "anchors_received"} <= set(s["figures"])
  assert set(s["anchor_sources"]) == {"received", "probe"}
  assert s["vision"]["summary_token"] == "mean of the patches"
  # The probe anchors are those the model's connector would rank (SigLIP's own mean/std).
  from acformer_jax.analysis import loading
  ck = loading.load_vision(d)
  pixels = preprocess.preprocess_image(str(image_file), 32, pad_to_square=False,
                                       mean=towers.HALF, std=towers.HALF)
  _, anchor = jax.jit(SiglipVisionTower(ck.config).apply)({"params": ck.params}, pixels[None])
  for b in s["budgets"]:
    want = np.asarray(select_anchors(anchor, b["budget"]))[0, 1:] - 1
    assert b["anchors"] == want.tolist()
  # DINOv2 run at 42 px (its position grid is 4x4 = 56 px): a 3x3 grid, ImageNet mean/std.
  d = tiny_hf.save(dino, tmp_path / "dino")
  out = tmp_path / "d"
  assert analyze.main(["--checkpoint", str(d), "--image", str(image_file), "--out", str(out),
                       "--resolution", "42", "--budgets", "4"]) == 0
  s = json.loads((out / "summary.json").read_text())
  assert s["checkpoint_kind"] == "hf_dinov2" and s["vision"]["grid"] == 3
  assert s["anchor_source"] == "cls" and "cls_attention_maps" in s["figures"]
  with pytest.raises(ValueError, match="fixed to 56 px"):
    analyze.analyze(tiny_hf.save(tiny_hf.tiny_clip_vision(seed=2), tmp_path / "clip"),
                    image_file, tmp_path / "c", image_size=42)

"""SigLIP and DINOv2 as conversion sources: a Llava with a SigLIP tower (hf-llava, both
directions) and Dinov2Model / SiglipVisionModel directories as the vision tower."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers

import tiny_checkpoints as T
import tiny_hf
from acformer_jax import load_pretrained
from acformer_jax.conversion import exporting, pipeline
from acformer_jax.conversion.check import fixed_inputs

TOL = 2e-4
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=32, patch_size=8)  # 16 patches


def _llava_siglip(directory, seed=7, vocab=96, image_id=94):
  cfg = transformers.LlavaConfig(
      vision_config=transformers.SiglipVisionConfig(**SIGLIP),
      text_config=transformers.LlamaConfig(**dict(T.TEXT, vocab_size=vocab,
                                                  pad_token_id=image_id + 1)),
      image_token_index=image_id, image_seq_length=16, vision_feature_layer=-2,
      vision_feature_select_strategy="full", projector_hidden_act="gelu")
  torch.manual_seed(seed)
  model = tiny_hf.randomize_(transformers.LlavaForConditionalGeneration(cfg), seed, std=0.15)
  model.save_pretrained(directory)
  return model.eval()


def test_llava_with_siglip_tower_converts_and_matches(tmp_path):
  model = _llava_siglip(tmp_path / "src")
  report = pipeline.convert("hf-llava", tmp_path / "src", tmp_path / "ckpt", tolerance=TOL)
  assert report["self_check"] == "passed" and report["max_abs_diff"] <= TOL, report
  cfg = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
  assert cfg["vision"]["tower"] == "siglip" and cfg["vision"]["use_head"]
  mod, params = load_pretrained(tmp_path / "ckpt")
  images, ids = fixed_inputs(mod.config)
  assert (ids == 94).sum(axis=1).max() == 16
  ours = np.asarray(jax.jit(mod.apply)({"params": params}, images, ids))  # one compile
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
  assert np.max(np.abs(ours - ref)) <= TOL
  # Back to a Llava directory transformers loads, with the same tensors.
  exporting.export(tmp_path / "ckpt", "hf-llava", tmp_path / "back")
  back = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
  assert back.config.vision_feature_select_strategy == "full"
  for k, v in model.state_dict().items():
    assert torch.equal(back.state_dict()[k], v), k


def test_llava_with_siglip_rejects_default_strategy(tmp_path):
  _llava_siglip(tmp_path / "src")
  d = json.loads((tmp_path / "src" / "config.json").read_text())
  d["vision_feature_select_strategy"] = "default"
  (tmp_path / "src" / "config.json").write_text(json.dumps(d))
  with pytest.raises(ValueError, match="vision_feature_select_strategy"):
    pipeline.convert("hf-llava", tmp_path / "src", tmp_path / "ckpt", tolerance=TOL)


@pytest.mark.parametrize("kind", ["dinov2"])  # siglip: covered by the Llava test above
def test_vision_directories_as_tower_sources(tmp_path, kind):
  if kind == "dinov2":
    vcfg = transformers.Dinov2Config(hidden_size=32, mlp_ratio=2, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=56, patch_size=14)
    model = transformers.Dinov2Model(vcfg)
  else:
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP))
  tiny_hf.randomize_(model, 11).save_pretrained(tmp_path / "vision")
  T.llama(tmp_path / "llm")
  report = pipeline.convert("hf-clip", tmp_path / "vision", tmp_path / "ckpt", llm=tmp_path / "llm",
                            connector={"type": "acformer", "num_queries": 8, "depth": 1,
                                       "heads": 2, "dim_head": 8},
                            tolerance=TOL)
  assert report["self_check"] == "passed", report
  assert "vision features" in report.get("self_check_details", str(report))
  cfg = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
  assert cfg["vision"]["tower"] == kind

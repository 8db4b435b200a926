"""Every LLM family vs transformers (issue #16): a tiny random causal LM converted with
``convert --format hf-<family>`` and a tiny ``LlavaForConditionalGeneration`` on that
family converted with ``--format hf-llava`` match transformers' logits (full forward with
right padding; prefill + token-by-token decode through the KV-cache engine) within 2e-4
in float32, greedy generation gives transformers' tokens, and the hf-llava export is
bit-exact, loads in transformers and re-imports to the same params."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers

import tiny_hf
from acformer_jax import load_pretrained
from acformer_jax.conversion import exporting, pipeline
from acformer_jax.inference import engine as E
from acformer_jax.models import registry
from tests.conversion import tiny_checkpoints as TC

TOL = 2e-4
T = 12          # prompt length; every sliding window below is shorter
MAX_NEW = 6
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, rms_norm_eps=1e-5)
# name: (family, HF model_type, config overrides). Covers GQA and MQA, tied and untied
# heads, q/k/v biases, an explicit head_dim and a sliding window shorter than the sequence.
CASES = {
    "llama3_gqa_tied": ("llama3", "llama", dict(num_key_value_heads=2, tie_word_embeddings=True,
                                                rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)),
    "qwen2_gqa_bias_tied": ("qwen2", "qwen2", dict(num_key_value_heads=2, rope_theta=1e6,
                                                   tie_word_embeddings=True)),
    "mistral_mqa_window4_untied": ("mistral", "mistral", dict(num_key_value_heads=1,
                                                              sliding_window=4)),
    "gemma_mqa_headdim16_tied": ("gemma", "gemma", dict(num_key_value_heads=1, head_dim=16,
                                                        hidden_act="gelu_pytorch_tanh")),
}


def _text_config(model_type, overrides, **extra):
  kw = dict(TEXT, **overrides, **extra)
  kw.setdefault("tie_word_embeddings", False)
  cfg = transformers.AutoConfig.for_model(model_type, **kw)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  return cfg


def _hf_causal_lm(directory, seed, model_type, overrides):
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(_text_config(model_type, overrides))
  model = tiny_hf.randomize_(model, seed, std=0.15)
  model.save_pretrained(directory)
  return model


def _hf_llava(directory, seed, model_type, overrides, image_id=94):
  cfg = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(**TC.VISION),
      text_config=_text_config(model_type, overrides, pad_token_id=image_id + 1),
      image_token_index=image_id, image_seq_length=16, vision_feature_layer=-2,
      vision_feature_select_strategy="default", projector_hidden_act="gelu",
      tie_word_embeddings=overrides.get("tie_word_embeddings", False))
  torch.manual_seed(seed)
  model = tiny_hf.randomize_(transformers.LlavaForConditionalGeneration(cfg), seed, std=0.15)
  model.save_pretrained(directory)
  return model


def _convert(fmt, src, out, check=True, **kw):
  report = pipeline.convert(fmt, src, out, tolerance=TOL, skip_check=not check, **kw)
  if check:  # the converter's own transformers-vs-JAX check (image + text logits)
    assert report["self_check"] == "passed" and report["max_abs_diff"] <= TOL, report
  return report


def _prompts(seed, vocab_hi=90):
  g = np.random.default_rng(seed)
  return [g.integers(3, vocab_hi, T).tolist(), g.integers(3, vocab_hi, T - 3).tolist()]


def _check_forward_and_generation(model, params, hf, prompts, eos, image=None, image_id=None):
  """Right-padded full forward == transformers; engine greedy tokens == transformers'
  ``generate``; the engine's per-token (prefill + cached decode) logits == transformers'
  full forward over the generated sequence."""
  s = model.config.vision.image_size
  img = np.zeros((s, s, 3), np.float32) if image is None else image
  pix = torch.from_numpy(img.transpose(2, 0, 1)[None].copy())
  extra = {} if image is None else {"pixel_values": pix}
  rows = [([image_id] * 16 + p) if image is not None else p for p in prompts]
  ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  images = np.stack([img] * len(rows))
  got = np.asarray(jax.jit(lambda p, a, b, c: model.apply({"params": p}, a, b, attention_mask=c))(
      params, images, ids, mask))
  engine = E.Engine(model, params, batch_size=1, bucket_multiple=16)
  for i, r in enumerate(rows):
    x = torch.from_numpy(np.asarray([r], np.int64))
    with torch.no_grad():
      ref = hf(input_ids=x, **extra).logits.numpy()[0]
    np.testing.assert_allclose(got[i, :len(r)], ref, atol=TOL, rtol=0)
    res = engine.generate([E.Request(r, image if image is not None else None)],
                          max_new_tokens=MAX_NEW, eos_token_id=eos, return_scores=True)[0]
    with torch.no_grad():
      want = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW,
                         do_sample=False, eos_token_id=eos, pad_token_id=0,
                         **extra)[0, len(r):].tolist()
    if eos in want:
      want = want[:want.index(eos)]
    assert res.tokens == want, (res.tokens, want)
    full = torch.from_numpy(np.asarray([r + res.tokens], np.int64))
    with torch.no_grad():
      ref_steps = hf(input_ids=full, **extra).logits.numpy()[0, len(r) - 1:len(r) - 1 + len(res.tokens)]
    np.testing.assert_allclose(res.scores[:len(res.tokens)], ref_steps, atol=TOL, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_causal_lm(case, tmp_path):
  family, model_type, overrides = CASES[case]
  hf = _hf_causal_lm(tmp_path / "lm", len(case), model_type, overrides)
  TC.clip(tmp_path / "clip")
  _convert(f"hf-{family}", tmp_path / "lm", tmp_path / "ckpt", check=False,
           vision=tmp_path / "clip", connector={"type": "linear"})
  model, params = load_pretrained(tmp_path / "ckpt")
  lc = model.config.llm
  assert lc.family == family and lc.sliding_window == overrides.get("sliding_window")
  assert lc.tie_word_embeddings == hf.config.tie_word_embeddings
  assert ("lm_head" in params["llm"]) != lc.tie_word_embeddings
  _check_forward_and_generation(model, params, hf, _prompts(len(case)), eos=lc.eos_token_id)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_llava_round_trip(case, tmp_path):
  family, model_type, overrides = CASES[case]
  hf = _hf_llava(tmp_path / "src", len(case) + 1, model_type, overrides)
  _convert("hf-llava", tmp_path / "src", tmp_path / "ckpt")
  model, params = load_pretrained(tmp_path / "ckpt")
  assert model.config.llm.family == family  # detected from text_config
  image = np.random.default_rng(0).standard_normal(
      (TC.VISION["image_size"],) * 2 + (3,)).astype(np.float32)
  # (prompt seed chosen so that greedy decoding never emits the image token id)
  _check_forward_and_generation(model, params, hf, _prompts(len(case) + 3)[:1],
                                eos=model.config.llm.eos_token_id, image=image, image_id=94)
  exporting.export(tmp_path / "ckpt", "hf-llava", tmp_path / "back")
  back_state = TC.files_state(tmp_path / "back")
  src_state = TC.files_state(tmp_path / "src")
  assert sorted(back_state) == sorted(src_state)
  for k, v in src_state.items():
    assert torch.equal(back_state[k], v), k
  text = json.loads((tmp_path / "back" / "config.json").read_text())["text_config"]
  assert text["model_type"] == model_type
  back = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
  for k, v in hf.state_dict().items():
    assert torch.equal(back.state_dict()[k], v), k
  _convert("hf-llava", tmp_path / "back", tmp_path / "again", check=False)
  _, again = load_pretrained(tmp_path / "again")
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_registry_lookup_and_detection():
  assert set(registry.FAMILIES.names()) >= {"llama", "llama3", "qwen2", "mistral", "gemma"}
  with pytest.raises(ValueError, match=r"llm.family='falcon' is not registered; known: \("):
    registry.family("falcon")
  base = dict(TEXT, num_key_value_heads=2)
  assert registry.family_for_hf(dict(base, model_type="llama")).name == "llama"
  assert registry.family_for_hf(dict(base, model_type="llama", vocab_size=128256)).name == "llama3"
  assert registry.family_for_hf(dict(base, model_type="qwen2")).name == "qwen2"
  # (phi3 is registered by tests/models/test_toy_family.py when both run in one session)
  with pytest.raises(ValueError, match="model_type='bloom' has no registered LLM family"):
    registry.family_for_hf(dict(base, model_type="bloom"))
  with pytest.raises(ValueError, match="use_sliding_window=true"):
    registry.llm_config_from_hf(dict(base, model_type="qwen2", use_sliding_window=True))
  lc = registry.llm_config_from_hf(dict(base, model_type="gemma", num_key_value_heads=1))
  assert (lc.head_dim, lc.tie_word_embeddings, lc.norm_unit_offset, lc.scale_embeddings,
          lc.mlp_activation) == (256, True, True, True, "gelu_tanh")


@pytest.mark.parametrize("name,family,template", [
    ("llama3_8b_stage1", "llama3", "plain"), ("llama3_8b_stage2", "llama3", "llama3"),
    ("qwen2_7b_stage1", "qwen2", "plain"), ("qwen2_7b_stage2", "qwen2", "chatml")])
def test_recipes_validate(name, family, template):
  """Llama-3-8B / Qwen2-7B with AcFormer-145, both stages: valid on 32 chips, the family's
  decoder, template and FLOPs (8B: 2 * 7.5e9 weight FLOPs per token, within 2%)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  from acformer_jax.config import num_visual_tokens  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import flops  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer.validate import validate  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.init.params_from = "orbax:/runs/previous"
  mc = validate(c, num_devices=16)  # v5p-32: the recipes' global batches are multiples of 16 rows
  assert mc.llm.family == family and c.data.template == template
  assert num_visual_tokens(mc) == 145 and mc.image_token_id == mc.llm.vocab_size
  w, _ = flops.llm_forward_flops(mc.llm, 1, head_positions=1)
  non_embedding = {"llama3": 7.50e9, "qwen2": 7.07e9}[family]  # params excl. the input table
  assert w / 2 == pytest.approx(non_embedding, rel=0.02)


def test_unknown_family_fails_validation_early():
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer.validate import ConfigError, validate  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny_acformer_stage1.py"
  spec = importlib.util.spec_from_file_location("tiny_s1", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model.llm.family = "falcon"
  with pytest.raises(ConfigError, match=r"model.llm.family='falcon' is not registered; known: "):
    validate(c, num_devices=8)

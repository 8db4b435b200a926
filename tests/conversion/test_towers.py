"""Loading the towers from transformers directories (spec docs/jax_practices.md item 7,
docs/method.md 2.9): every on-disk layout, exact round trips through the key maps, one
error naming every bad key, and sharded placement straight from the files."""
import json

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

import tiny_hf
from acformer_jax import sharding
from acformer_jax.conversion import ConversionError, load_hf_clip_vision, load_hf_llama
from acformer_jax.conversion.sources import TensorSource
from acformer_jax.conversion.keymaps import clip_vision_keymap, flatten_paths, llama_keymap
from acformer_jax.conversion.towers import llm_config_from_hf, rope_from_hf

FORMATS = ("safetensors", "sharded", "bin", "sharded_bin")


def _exported(keymap, params):
  return {k: np.asarray(v) for k, v in keymap.export(flatten_paths(params))}


def _assert_state_equal(exported, state):
  assert set(exported) <= set(state)
  for k, v in exported.items():
    np.testing.assert_array_equal(v, state[k].float().numpy(), err_msg=k)


@pytest.fixture(scope="module")
def clip():
  return tiny_hf.tiny_clip_vision(seed=3, image_size=56, layers=3)


@pytest.fixture(scope="module")
def llama():
  return tiny_hf.tiny_llama(seed=4, num_hidden_layers=3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_every_layout_round_trips(clip, fmt, tmp_path):
  directory = tiny_hf.save(clip, tmp_path, fmt)
  cfg, params = load_hf_clip_vision(directory, select_layer=-2)
  assert params["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
  assert params["unused_layers"]["mlp"]["fc1"]["kernel"].shape == (1, 32, 64)
  exported = _exported(clip_vision_keymap(cfg.num_layers, cfg.num_computed_layers), params)
  _assert_state_equal(exported, clip.state_dict())
  assert len(exported) == len(clip.state_dict())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tied", [False, True])
def test_llama_every_layout_round_trips(fmt, tied, tmp_path):
  model = tiny_hf.tiny_llama(seed=5, tie_word_embeddings=tied)
  directory = tiny_hf.save(model, tmp_path, fmt)
  cfg, params = load_hf_llama(directory)
  assert cfg.tie_word_embeddings == tied and ("lm_head" in params) == (not tied)
  exported = _exported(llama_keymap(cfg.num_layers, tied), params)
  _assert_state_equal(exported, model.state_dict())
  assert set(exported) | ({"lm_head.weight"} if tied else set()) == set(model.state_dict())


def test_full_clip_model_directory(tmp_path):
  """A CLIPModel save (keys ``vision_model.*`` next to the text tower), like the
  openai/clip-vit-large-patch14-336 repository."""
  cfg = transformers.CLIPConfig(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=56, patch_size=14),
      text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=50), projection_dim=8)
  model = tiny_hf.randomize_(transformers.CLIPModel(cfg), seed=6)
  model.save_pretrained(tmp_path)
  vcfg, params = load_hf_clip_vision(tmp_path, select_layer=-1)
  assert (vcfg.num_layers, vcfg.image_size, vcfg.hidden_size) == (2, 56, 32)
  _assert_state_equal(_exported(clip_vision_keymap(2, 2), params),
                      model.vision_model.state_dict())


def test_bfloat16_checkpoint(llama, tmp_path):
  model = tiny_hf.tiny_llama(seed=8).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  with TensorSource().mount("", tmp_path) as source:
    assert source.read("model.norm.weight").dtype == ml_dtypes.bfloat16
  _, params = load_hf_llama(tmp_path)
  assert params["norm"]["scale"].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(params["norm"]["scale"]),
                                model.model.norm.weight.detach().float().numpy())


def _rewrite(directory, edit):
  path = directory / "model.safetensors"
  state = safetensors.torch.load_file(path)
  edit(state)
  safetensors.torch.save_file(state, path, metadata={"format": "pt"})


def test_bad_files_raise_one_error_naming_every_key(clip, llama, tmp_path):
  def break_clip(state):
    del state["encoder.layers.1.mlp.fc2.bias"]
    state["encoder.layers.9.mlp.fc2.bias"] = torch.zeros(32)
    state["pre_layrnorm.weight"] = torch.zeros(31)

  clip_dir = tiny_hf.save(clip, tmp_path / "clip")
  _rewrite(clip_dir, break_clip)
  with pytest.raises(ConversionError) as err:
    load_hf_clip_vision(clip_dir)
  msg = str(err.value)
  assert str(clip_dir) in msg
  assert "missing keys (1): encoder.layers.1.mlp.fc2.bias" in msg
  assert "unexpected keys (1): encoder.layers.9.mlp.fc2.bias" in msg
  assert "pre_layrnorm.weight: file (31,), expected (32,)" in msg

  def break_llama(state):
    del state["lm_head.weight"]
    del state["model.layers.2.self_attn.q_proj.weight"]
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(48, 33)

  llama_dir = tiny_hf.save(llama, tmp_path / "llama")
  _rewrite(llama_dir, break_llama)
  with pytest.raises(ConversionError) as err:
    load_hf_llama(llama_dir)
  msg = str(err.value)
  assert "missing keys (2): lm_head.weight, model.layers.2.self_attn.q_proj.weight" in msg
  assert "model.layers.0.mlp.up_proj.weight: file (48, 33), expected (48, 32)" in msg


@pytest.mark.parametrize("fmt", ["sharded", "sharded_bin"])
def test_sharded_placement_reads_slices(llama, clip, fmt, tmp_path):
  mesh = sharding.make_mesh((2, 2, 2))
  llama_dir = tiny_hf.save(llama, tmp_path / "llama", fmt)
  _, host = load_hf_llama(llama_dir)
  _, placed = load_hf_llama(llama_dir, shardings=mesh)
  q = placed["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (3, 16, 16)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               host, placed)
  clip_dir = tiny_hf.save(clip, tmp_path / "clip", fmt)
  _, host = load_hf_clip_vision(clip_dir)
  _, placed = load_hf_clip_vision(clip_dir, shardings=mesh)
  k = placed["embeddings"]["patch_embedding"]["kernel"]
  assert k.addressable_shards[0].data.shape == (14, 14, 3, 16)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               host, placed)


def test_reader_slices_and_errors(llama, tmp_path):
  directory = tiny_hf.save(llama, tmp_path / "ok", "sharded")
  with TensorSource().mount("", directory) as source:
    full = source.read("model.embed_tokens.weight")
    np.testing.assert_array_equal(
        source.read_slice("model.embed_tokens.weight", (slice(3, 9), slice(None, None, 2))),
        full[3:9, ::2])
    assert len(source.keys()) == len(llama.state_dict())
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "weights.pt").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"expected one of .*model.safetensors.*'weights.pt'"):
    TensorSource().mount("", tmp_path / "empty")
  index = json.loads((directory / "model.safetensors.index.json").read_text())
  (directory / sorted(set(index["weight_map"].values()))[0]).unlink()
  with pytest.raises(FileNotFoundError, match="shard files that do not exist"):
    TensorSource().mount("", directory)


def test_config_translation_rules():
  old = dict(rope_theta=5e5, rope_scaling=dict(type="linear", factor=4.0))
  assert rope_from_hf(old) == (5e5, (("factor", 4.0), ("rope_type", "linear")))
  new = dict(rope_parameters=dict(rope_type="default", rope_theta=1e4))
  assert rope_from_hf(new) == (1e4, None)
  with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
    rope_from_hf(dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=2.0)))
  base = tiny_hf.tiny_llama(seed=0).config.to_dict()
  with pytest.raises(ValueError, match="attention_bias=true"):
    llm_config_from_hf(dict(base, attention_bias=True))
  cfg = llm_config_from_hf(dict(base, eos_token_id=[7, 8], pad_token_id=None))
  assert (cfg.eos_token_id, cfg.pad_token_id) == (7, 0)

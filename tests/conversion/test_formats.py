"""Format details: key layouts and config translation (docs/method.md 2.9, 1.5), the streaming
reader and writer (docs/jax_practices.md item 7), the torch AcFormer reference of the
self-check, sharded placement and the loaders that consume the output."""
import json

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors import safe_open

import tiny_checkpoints as T
from acformer_jax import sharding
from acformer_jax.conversion import formats, hf_llava, pipeline, torch_acformer
from acformer_jax.conversion.keymaps import flatten_paths
from acformer_jax.conversion.sources import SafetensorsFile, TensorSource
from acformer_jax.conversion.writer import INDEX_FILE, ShardedWriter


def test_hf_llava_layout_detection():
  for name, (body, head, vision, proj) in hf_llava.LAYOUTS.items():
    keys = [body + "embed_tokens.weight", head, vision + "embeddings.patch_embedding.weight",
            proj + "linear_1.weight"]
    assert hf_llava.detect_layout(keys) == (body, head, vision, proj)
    assert hf_llava.layout_name(hf_llava.detect_layout(keys)) == name


def test_hf_llava_config_translation():
  base = {"model_type": "llava", "image_token_index": 32000, "pad_token_id": 32001,
          "vision_feature_layer": -2, "image_seq_length": 576,
          "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "image_size": 336,
                            "patch_size": 14, "num_hidden_layers": 24, "num_attention_heads": 16},
          "text_config": {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                          "num_hidden_layers": 32, "num_attention_heads": 32,
                          "rms_norm_eps": 1e-5, "max_position_embeddings": 4096}}
  problems = []
  mc = hf_llava.model_config_from_hf_llava(base, problems)
  assert problems == []
  assert (mc.llm.vocab_size, mc.image_token_id, mc.llm.pad_token_id) == (32064, 32000, 32001)
  assert (mc.vision.select_layer, mc.vision.num_computed_layers) == (-2, 23)
  assert mc.connector.type == "mlp2x_gelu"
  bad = dict(base, vision_feature_select_strategy="full", vision_feature_layer=[-2, -5],
             projector_hidden_act="relu", image_seq_length=577)
  hf_llava.model_config_from_hf_llava(bad, problems)
  assert len(problems) == 4 and "only 'default' (drop CLS" in problems[1]
  back = hf_llava.export_config(mc, "float16", base)
  assert back["text_config"]["vocab_size"] == 32064 and back["image_token_index"] == 32000


def test_safetensors_slices_and_views(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"a": rng.standard_normal((6, 5, 4)).astype(np.float32),
            "b": rng.standard_normal((8, 3)).astype(ml_dtypes.bfloat16),
            "kv": rng.standard_normal((10, 3)).astype(np.float16)}
  safetensors.numpy.save_file(arrays, tmp_path / "model.safetensors")
  f = SafetensorsFile(tmp_path / "model.safetensors")
  for key, arr in arrays.items():
    for idx in [(slice(None),) * arr.ndim, (slice(1, 3),) + (slice(None),) * (arr.ndim - 1),
                (slice(None), slice(1, 2)) + (slice(None),) * (arr.ndim - 2)]:
      got = f.read_slice(key, idx)
      assert got.dtype == arr.dtype and np.array_equal(got.view(np.uint8), arr[idx].view(np.uint8))
  src = TensorSource().mount("", tmp_path)
  src.add_view("kv[0/2]", "kv", 0, 5)
  src.add_view("kv[1/2]", "kv", 5, 10)
  assert src.keys() == ["a", "b", "kv[0/2]", "kv[1/2]"] and "kv" in src.keys(raw=True)
  assert src.info("kv[1/2]") == ((5, 3), np.dtype(np.float16))
  before = src.bytes_read
  np.testing.assert_array_equal(src.read_slice("kv[1/2]", (slice(1, 3), slice(0, 2))),
                                arrays["kv"][6:8, 0:2])
  assert src.bytes_read - before == 2 * 2 * 2  # only the slice's bytes


def test_writer_shards_in_any_order(tmp_path):
  rng = np.random.default_rng(1)
  arrays = {f"t{i}": rng.standard_normal((i + 1, 16)).astype(dt)
            for i, dt in enumerate([np.float32, ml_dtypes.bfloat16, np.float16] * 2)}
  w = ShardedWriter(tmp_path, [(k, v.shape, v.dtype) for k, v in arrays.items()],
                    max_shard_bytes=200)
  with pytest.raises(ValueError, match="shape"):
    w.write("t0", np.zeros((2, 16), np.float32))
  for k in reversed(list(arrays)):
    w.write(k, arrays[k])
  names = w.close()
  assert len(names) > 1 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
  index = json.loads((tmp_path / INDEX_FILE).read_text())
  for k, v in arrays.items():
    with safe_open(tmp_path / index["weight_map"][k], "np") as f:
      got = f.get_tensor(k) if v.dtype != ml_dtypes.bfloat16 else None
    if got is not None:
      np.testing.assert_array_equal(got, v)
  back = T.files_state(tmp_path)  # torch reads bfloat16 too
  for k, v in arrays.items():
    np.testing.assert_array_equal(back[k].float().numpy(), v.astype(np.float32))
  w2 = ShardedWriter(tmp_path / "x", [("a", (2,), np.float32)])
  with pytest.raises(ValueError, match="never written"):
    w2.close()


def test_torch_acformer_matches_independent_reference():
  """The self-check's torch connector == helper-2's reference, on tie-heavy attention."""
  ref = T.torch_reference()
  proj = ref.acformer_projector(32, 24, depth=2, heads=2, dim_head=8, ff_mult=2)
  T.tiny_hf.randomize_(proj, seed=3)
  mine = torch_acformer.build_projector(32, 24, depth=2, heads=2, dim_head=8, ff_mult=2)
  mine.load_state_dict(proj.state_dict())
  g = torch.Generator().manual_seed(0)
  feats = torch.randn(3, 17, 32, generator=g)
  attn = torch.round(torch.rand(3, 4, 16, generator=g) * 4) / 4  # many ties
  for b in range(3):
    assert torch_acformer.anchor_indices(attn[b], 8) == ref.official_select(attn[b].numpy(), 8)
  with torch.no_grad():
    torch.testing.assert_close(torch_acformer.connector_forward(mine, feats, attn, 8),
                               ref.acformer_connector(proj, feats, attn, 8), rtol=0, atol=0)


def test_sharded_placement_matches_one_device(tmp_path):
  T.hf_llava(tmp_path / "src", shard="20KB")
  plan = formats.make_plan("hf-llava", tmp_path / "src")
  _, one = pipeline.build_params(plan, sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  plan = formats.make_plan("hf-llava", tmp_path / "src")
  cfg, placed = pipeline.build_params(plan, sharding.make_mesh((2, 2, 2)))
  q = placed["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (2, 16, 16)
  flat_one, flat_placed = flatten_paths(one), flatten_paths(placed)
  assert sorted(flat_one) == sorted(flat_placed)
  for k, v in flat_one.items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(flat_placed[k]), err_msg=k)
  assert cfg.param_dtype == "float32" and cfg.llm.vocab_size == 96

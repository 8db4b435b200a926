"""Inference checkpoint layout: save -> load round trip (one device and a mesh), and clear
errors for bad directories (docs/inference.md, docs/jax_practices.md items 3 and 6)."""
import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from acformer_jax import config as C
from acformer_jax import sharding
from acformer_jax.inference import loading
from tests.inference import tiny_model as T


def _assert_same(a, b):
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_round_trip_on_one_device(tiny_checkpoint):
  ckpt, params = tiny_checkpoint
  loaded = loading.load_for_inference(ckpt)
  assert loaded.config == T.CKPT_CONFIG
  _assert_same(loaded.params, params)
  assert len(loaded.tokenizer) == 150 and loaded.tokenizer.eos_token_id == 2
  assert json.loads((ckpt / "model_config.json").read_text())["llm"]["vocab_size"] == 150


def test_restore_onto_a_mesh_uses_the_logical_shardings(tiny_checkpoint):
  ckpt, params = tiny_checkpoint
  mesh = sharding.make_mesh((2, 2, 2))
  loaded = loading.load_for_inference(ckpt, mesh=mesh, dtype="bfloat16")
  assert loaded.config.dtype == "bfloat16" and loaded.config.param_dtype == "float32"
  _assert_same(loaded.params, params)
  q = loaded.params["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]  # (layers, embed, heads)
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  emb = loaded.params["llm"]["embed_tokens"]["embedding"]              # (vocab, embed)
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_bad_directories_give_clear_errors(tiny_checkpoint, tmp_path):
  ckpt, _ = tiny_checkpoint
  with pytest.raises(FileNotFoundError, match="does not exist"):
    loading.load_for_inference(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="model_config.json not found"):
    loading.load_for_inference(tmp_path)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "model_config.json").write_text("{not json")
  with pytest.raises(ValueError, match="model_config.json: invalid JSON"):
    loading.load_for_inference(bad)
  (bad / "model_config.json").write_text(json.dumps({"llm": {"hidden": 3}}))
  with pytest.raises(ValueError, match=r"model_config.json: not a ModelConfig.*hidden"):
    loading.load_for_inference(bad)
  (bad / "model_config.json").write_text(json.dumps(C.model_config_to_dict(T.CKPT_CONFIG)))
  with pytest.raises(FileNotFoundError, match="params not found"):
    loading.load_for_inference(bad)
  # Params that do not fit the config (a wider LLM) name both files.
  other = tmp_path / "other"
  shutil.copytree(ckpt, other)
  wide = dataclasses.replace(T.CKPT_CONFIG, llm=dataclasses.replace(T.CKPT_CONFIG.llm,
                                                                     intermediate_size=96))
  (other / "model_config.json").write_text(json.dumps(C.model_config_to_dict(wide)))
  with pytest.raises(ValueError, match=r"params: the params do not match .*model_config.json"):
    loading.load_for_inference(other)
  # No tokenizer anywhere.
  notok = tmp_path / "notok"
  shutil.copytree(ckpt, notok)
  shutil.rmtree(notok / "tokenizer")
  with pytest.raises(FileNotFoundError, match="no tokenizer in"):
    loading.load_for_inference(notok)
  assert loading.load_for_inference(notok, require_tokenizer=False).tokenizer is None

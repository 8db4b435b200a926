"""``convert --format acformer --num_queries K`` for official configs without
``acformer_num_queries`` (the K=144 release omits it; the code default is 256)."""
import json

import pytest

import tiny_checkpoints as T
from acformer_jax.conversion import pipeline
from acformer_jax.conversion.keymaps import ConversionError


def test_num_queries_flag(tmp_path):
  T.original(tmp_path / "src", kind="acformer")
  T.clip(tmp_path / "clip")
  cfg_file = tmp_path / "src" / "config.json"
  d = json.loads(cfg_file.read_text())
  del d["acformer_num_queries"]
  cfg_file.write_text(json.dumps(d))
  with pytest.raises(ConversionError, match="--num_queries"):
    pipeline.convert("acformer", tmp_path / "src", tmp_path / "a", vision=tmp_path / "clip")
  with pytest.raises(ValueError, match="acformer only"):
    pipeline.convert("llava", tmp_path / "src", tmp_path / "b", vision=tmp_path / "clip",
                     num_queries=8)
  report = pipeline.convert("acformer", tmp_path / "src", tmp_path / "ckpt",
                            vision=tmp_path / "clip", num_queries=8, tolerance=2e-4)
  assert report["self_check"] == "passed", report
  mc = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
  assert mc["connector"]["num_queries"] == 8
  d["acformer_num_queries"] = 16  # a flag contradicting the config is an error
  cfg_file.write_text(json.dumps(d))
  with pytest.raises(ConversionError, match="num_queries=8"):
    pipeline.convert("acformer", tmp_path / "src", tmp_path / "c", vision=tmp_path / "clip",
                     num_queries=8)

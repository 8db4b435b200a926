"""tfds builders for LLaVA-format JSON + image folders (stage-1 and stage-2 styles)."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from acformer_jax.data.builders import LlavaInstruct, LlavaPretrain
from acformer_jax.data.pipeline import record_conversations


def _by_id(source):
  return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


def test_instruct_records_hold_bytes_and_conversations(llava_instruct_folder, tmp_path):
  root, entries, _ = llava_instruct_folder
  b = LlavaInstruct(json_path=str(root / "llava_v1_5_mix665k.json"), image_root=str(root), data_dir=str(tmp_path))
  b.download_and_prepare()
  recs = _by_id(b.as_data_source("train"))
  stored = [e for e in entries if "conversations" in e]
  assert sorted(recs) == sorted(e["id"] for e in stored)
  assert b.info.metadata["build_skipped"] == {"bad_record": 1}
  for e in stored:
    r = recs[e["id"]]
    assert record_conversations(r) == e["conversations"]
    assert bool(r["has_image"]) == ("image" in e)
    assert r["num_words"] == sum(len(m["value"].split()) for m in e["conversations"])
    if "image" in e:
      path = root / e["image"]
      assert r["image"] == (path.read_bytes() if path.is_file() else b"")  # exact file bytes, b"" if missing
      assert r["image_path"].decode() == e["image"]
    else:
      assert r["image"] == b""
  # Reopening from the directory alone works (no builder code needed to read).
  again = tfds.builder_from_directory(str(b.data_dir)).as_data_source("train")
  assert len(again) == len(stored)


def test_tfds_build_cli_with_manual_dir(llava_pretrain_folder, tmp_path):
  root, entries = llava_pretrain_folder
  cmd = [sys.executable, "-m", "acformer_jax.data.tfds_build", "llava_pretrain", "--manual_dir", str(root),
         "--data_dir", str(tmp_path)]
  subprocess.run(cmd, check=True, timeout=300, capture_output=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  source = LlavaPretrain(data_dir=str(tmp_path)).as_data_source("train")
  recs = _by_id(source)
  assert sorted(recs) == [e["id"] for e in entries]
  for e in entries:
    assert recs[e["id"]]["image"] == (root / "images" / e["image"]).read_bytes()
    assert record_conversations(recs[e["id"]])[1]["value"] == e["conversations"][1]["value"]
  # The trainer finds this prebuilt dataset by its content fingerprint (multi-host runs cannot build).
  from acformer_jax.data.train_data import open_data_source, resolve_data_config
  cfg = resolve_data_config({"builder": "llava_pretrain", "manual_dir": str(root), "data_dir": str(tmp_path)})
  _, again = open_data_source(cfg, allow_build=False)
  assert len(again) == len(entries)


def test_clear_errors_for_bad_paths(tmp_path, llava_pretrain_folder):
  root, _ = llava_pretrain_folder
  with pytest.raises(FileNotFoundError, match="annotation file"):
    LlavaPretrain(json_path=str(tmp_path / "none.json"), image_root=str(root), data_dir=str(tmp_path)
                  ).download_and_prepare()
  with pytest.raises(FileNotFoundError, match="image root"):
    LlavaPretrain(json_path=str(root / "blip_laion_cc_sbu_558k.json"), image_root=str(tmp_path / "no_images"),
                  data_dir=str(tmp_path / "d2")).download_and_prepare()
  (tmp_path / "obj.json").write_text(json.dumps({"not": "a list"}))
  with pytest.raises(ValueError, match="expected a JSON list"):
    LlavaInstruct(json_path=str(tmp_path / "obj.json"), image_root=str(root), data_dir=str(tmp_path / "d3")
                  ).download_and_prepare()

"""Data caches keyed by content (issue #15 item 3): a changed JSON or image rebuilds, only
``reuse_stale`` reuses an old build; paths outside ``image_root`` and text that is not valid
UTF-8 are skipped, counted (with indices) and never abort the build."""
import json
import os
import pathlib

import pytest

from acformer_jax.data import make_train_iterator
from acformer_jax.data.tokenizer import load_tokenizer

MODEL = {"vision": {"image_size": 28, "patch_size": 14, "num_heads": 4},
         "connector": {"type": "pr", "num_queries": 5}, "image_token_id": 32000}


def _sample(i, image=None, text=None):
  e = {"id": f"s{i}", "conversations": [
      {"from": "human", "value": ("<image>\n" if image else "") + (text or f"Question {i}?")},
      {"from": "gpt", "value": f"Answer {i}."}]}
  if image:
    e["image"] = image
  return e


def _ids(root, data_dir, tok, **kw):
  """Sample ids of one epoch (order-free) and the iterator."""
  cfg = {"builder": "llava_instruct", "data_dir": str(data_dir), "json_path": str(root / "data.json"),
         "image_root": str(root / "images"), "template": "vicuna_v1", "max_length": 128,
         "global_batch_size": 2, "num_epochs": 1, "drop_remainder": False, "num_workers": 0}
  cfg.update(kw)
  it = make_train_iterator(cfg, tok, MODEL, 0, 1, seed=0, with_index=True)
  ids = [it._source[int(i)]["id"].decode() for b in it for i in b["sample_index"][:, 0] if i >= 0]  # pylint: disable=protected-access
  it.close()
  return sorted(ids), it


@pytest.fixture
def folder(tmp_path, llava_instruct_folder):
  src_root = llava_instruct_folder[0]
  root = tmp_path / "src"
  (root / "images").mkdir(parents=True)
  (root / "images" / "a.png").write_bytes((src_root / "gqa/images/2.png").read_bytes())
  return root


def test_changed_json_or_image_rebuilds_and_reuse_stale(folder, tokenizer_dir, tmp_path):
  tok = load_tokenizer(tokenizer_dir)
  data_dir = tmp_path / "tfds"
  write = lambda n: (folder / "data.json").write_text(  # noqa: E731
      json.dumps([_sample(i, "a.png" if i % 2 else None) for i in range(n)]))
  write(6)
  ids, it6 = _ids(folder, data_dir, tok)
  assert ids == [f"s{i}" for i in range(6)]
  write(9)  # same file name, same data_dir: a new build with the new samples
  ids, it9 = _ids(folder, data_dir, tok)
  assert len(ids) == 9 and it9.data_dir != it6.data_dir
  assert it9.data_fingerprint != it6.data_fingerprint
  assert _ids(folder, data_dir, tok)[1].data_dir == it9.data_dir  # unchanged: reused
  write(4)
  ids, stale = _ids(folder, data_dir, tok, reuse_stale=True)  # explicitly reuse the old build
  assert len(ids) == 9 and stale.data_dir == it9.data_dir
  ids, it4 = _ids(folder, data_dir, tok)
  assert len(ids) == 4 and it4.data_dir not in (it6.data_dir, it9.data_dir)
  # A changed image (same path, new size and mtime) is a changed source too.
  img = folder / "images" / "a.png"
  img.write_bytes(img.read_bytes() + b"\0")
  os.utime(img, ns=(1, 1))
  assert _ids(folder, data_dir, tok)[1].data_dir != it4.data_dir
  # Different preprocessing: same build, different data fingerprint.
  _, longer = _ids(folder, data_dir, tok, max_length=160)
  assert longer.data_fingerprint != it4.data_fingerprint


def test_paths_outside_the_image_root_are_skipped_unread(folder, tokenizer_dir, tmp_path, monkeypatch):
  outside = tmp_path / "secret.png"
  outside.write_bytes((folder / "images" / "a.png").read_bytes())
  depth = len(pathlib.Path(folder / "images").resolve().parts)
  entries = [_sample(0, "a.png"), _sample(1, "../" * depth + str(outside).lstrip("/")),
             _sample(2, str(outside)), _sample(3, "../secret.png"), _sample(4)]
  (folder / "data.json").write_text(json.dumps(entries))
  (folder / "secret.png").write_bytes(b"x")  # ../secret.png exists too, still outside
  read = []
  original = pathlib.Path.read_bytes
  monkeypatch.setattr(pathlib.Path, "read_bytes", lambda p: read.append(p.resolve()) or original(p))
  ids, it = _ids(folder, tmp_path / "tfds", load_tokenizer(tokenizer_dir))
  assert ids == ["s0", "s4"]
  assert it.stats()["build_skipped"] == {"bad_path": 3}
  assert not [p for p in read if p.suffix == ".png" and (folder / "images").resolve() not in p.parents]


def test_text_that_is_not_utf8_is_skipped_with_its_index(folder, tokenizer_dir, tmp_path):
  entries = [_sample(0), _sample(1, text="lone \ud800 surrogate"), _sample(2, "a.png"),
             _sample(3, text="BAD_BYTE_HERE"), _sample(4)]
  raw = json.dumps(entries).encode().replace(b"BAD_BYTE_HERE", b"caf\xe9")  # latin-1 byte
  (folder / "data.json").write_bytes(raw)
  ids, it = _ids(folder, tmp_path / "tfds", load_tokenizer(tokenizer_dir))
  assert ids == ["s0", "s2", "s4"]
  assert it.stats()["build_skipped"] == {"bad_text": 2}
  import tensorflow_datasets as tfds
  meta = tfds.builder_from_directory(it.data_dir).info.metadata
  assert meta["skipped_records"] == {"bad_text": [1, 3]}


def test_broken_json_names_file_and_line(folder, tokenizer_dir, tmp_path):
  (folder / "data.json").write_text('[\n  {"id": "a",\n  "conversations": [}\n]')
  with pytest.raises(ValueError, match=r"data.json: line 3 column 21: invalid JSON"):
    _ids(folder, tmp_path / "tfds", load_tokenizer(tokenizer_dir))

"""Input pipeline: host sharding, exact resume in a fresh process, length grouping, batch format."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from acformer_jax.data import make_train_iterator, sampler
from acformer_jax.data.tokenizer import load_tokenizer

MODEL = {"vision": {"image_size": 56, "patch_size": 14, "num_heads": 4},
         "connector": {"type": "pr", "num_queries": 4}, "image_token_id": 32000}
HERE = pathlib.Path(__file__).resolve().parent


def _demo_cfg(data_dir, **kw):
  cfg = {"builder": "acformer_demo/qa_tiny", "data_dir": str(data_dir), "max_length": 192,
         "global_batch_size": 8, "num_workers": 2}
  cfg.update(kw)
  return cfg


def test_two_hosts_are_disjoint_and_cover_the_epoch(demo_data_dir, tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  cfg = _demo_cfg(demo_data_dir, num_epochs=1, drop_remainder=False)
  seen, per_host = [], []
  for host in (0, 1):
    it = make_train_iterator(cfg, tok, MODEL, host, 2, seed=11, with_index=True)
    batches = list(it)
    assert all(b["input_ids"].shape == (4, 192) for b in batches)  # local batch = 8 / 2
    idx = np.concatenate([b["sample_index"][:, 0] for b in batches])  # one sample per row
    idx = idx[idx >= 0]
    per_host.append(idx)
    seen.append(set(idx.tolist()))
    assert len(seen[-1]) == len(idx)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(256))
  # Step k of both hosts together is global batch k of the shared epoch order.
  order = sampler.epoch_order(256, 0, 11, global_batch=8)
  np.testing.assert_array_equal(np.concatenate([per_host[0][:4], per_host[1][:4]]), order[:8])


def test_batch_format_and_determinism(demo_data_dir, tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  a = make_train_iterator(_demo_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=5)
  b = make_train_iterator(_demo_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=5)
  c = make_train_iterator(_demo_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=6)
  x, y, z = next(a), next(b), next(c)
  want = {"images": ((8, 1, 56, 56, 3), np.float32), "image_mask": ((8, 1), np.bool_),
          "input_ids": ((8, 192), np.int32), "labels": ((8, 192), np.int32),
          "segment_ids": ((8, 192), np.int32), "positions": ((8, 192), np.int32)}
  assert {k: (v.shape, v.dtype) for k, v in x.items()} == want
  for k in x:
    np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(x["input_ids"], z["input_ids"])
  assert x["image_mask"].all() and ((x["input_ids"] == 32000).sum(1) == 5).all()
  assert ((x["labels"] != -100) <= (x["segment_ids"] == 1)).all()
  assert set(np.unique(x["segment_ids"])) == {0, 1}  # unpacked: one sample per row
  n = (x["segment_ids"] > 0).sum(1)
  for r in range(8):
    np.testing.assert_array_equal(x["positions"][r, :n[r]], np.arange(n[r]))
  for it in (a, b, c):
    it.close()


def test_resume_in_fresh_process_gives_the_same_batches(llava_instruct_folder, tokenizer_dir, tmp_path):
  """7 batches + saved state + 5 batches in a subprocess == 12 batches in one go.

  Uses the bad-data folder (5 good of 13 records, global batch 2): the 12 batches span several
  epochs, cross epoch boundaries mid-batch and skip bad samples along the way.
  """
  root, _, _ = llava_instruct_folder
  cfg = {"builder": "llava_instruct", "data_dir": str(tmp_path / "tfds"),
         "json_path": str(root / "llava_v1_5_mix665k.json"), "image_root": str(root),
         "max_length": 160, "global_batch_size": 2, "image_size": 28, "num_workers": 2, "prefetch": 3}
  tok = load_tokenizer(tokenizer_dir)
  ref_it = make_train_iterator(cfg, tok, MODEL, 0, 1, seed=7, with_index=True)
  ref = [next(ref_it) for _ in range(12)]
  first = make_train_iterator(cfg, tok, MODEL, 0, 1, seed=7, with_index=True)
  for i in range(7):
    np.testing.assert_array_equal(next(first)["sample_index"], ref[i]["sample_index"])
  state = first.get_state()
  first.close()
  assert state["epoch"] >= 2 and state["skipped"]
  args = {"cfg": cfg, "model": MODEL, "tokenizer_dir": str(tokenizer_dir), "seed": 7,
          "state": json.loads(json.dumps(state)), "num_batches": 5, "out": str(tmp_path / "resumed.npz")}
  (tmp_path / "args.json").write_text(json.dumps(args))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, str(HERE / "resume_worker.py"), str(tmp_path / "args.json")],
                 check=True, env=env, timeout=300, capture_output=True)
  got = np.load(tmp_path / "resumed.npz")
  for i in range(5):
    for k, v in ref[7 + i].items():
      np.testing.assert_array_equal(got[f"{i}/{k}"], v, err_msg=f"batch {7 + i} key {k}")
  ref_state = ref_it.get_state()
  assert json.loads((tmp_path / "resumed.npz.state.json").read_text()) == ref_state
  ref_it.close()


def test_state_of_another_pipeline_is_rejected(demo_data_dir, tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  it = make_train_iterator(_demo_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=1)
  state = it.get_state()
  other = make_train_iterator(_demo_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=2)
  with pytest.raises(ValueError, match="fingerprint.seed"):
    other.set_state(state)


def test_modality_length_grouping():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 500, 203) * np.where(rng.random(203) < 0.3, -1, 1)
  order = sampler.epoch_order(203, 4, 9, lengths=lengths, global_batch=16)
  assert sorted(order.tolist()) == list(range(203))
  mm, lang = int((lengths > 0).sum()), int((lengths < 0).sum())
  full = mm // 16 + lang // 16
  for g in range(full):
    mb = lengths[order[g * 16:(g + 1) * 16]]
    assert (mb > 0).all() or (mb < 0).all()  # one modality per global batch
    assert (np.diff(np.abs(mb)) <= 0).all()   # longest first
  tail = order[full * 16:]
  assert len(tail) == mm % 16 + lang % 16 and (np.diff(tail) > 0).all()
  assert not np.array_equal(order, sampler.epoch_order(203, 5, 9, lengths=lengths, global_batch=16))


def test_group_by_length_through_the_iterator(llava_instruct_folder, tokenizer_dir, tmp_path):
  root, _, _ = llava_instruct_folder
  cfg = {"builder": "llava_instruct", "data_dir": str(tmp_path / "tfds"),
         "json_path": str(root / "llava_v1_5_mix665k.json"), "image_root": str(root), "max_length": 160,
         "global_batch_size": 2, "image_size": 28, "group_by_length": True, "num_epochs": 1,
         "drop_remainder": False}
  it = make_train_iterator(cfg, load_tokenizer(tokenizer_dir), MODEL, 0, 1, seed=0, with_index=True)
  idx = np.concatenate([b["sample_index"][:, 0] for b in it])
  assert sorted(idx[idx >= 0].tolist()) == sorted(
      i for i in range(len(it._source)) if it._source[i]["id"].decode().startswith("good"))  # pylint: disable=protected-access


def test_each_tower_gets_its_own_normalisation(demo_data_dir, tokenizer_dir):
  """Training rows are normalised with the tower's mean/std (models/towers.py), not CLIP's
  for every tower; the data fingerprint tells the normalisations apart."""
  from acformer_jax.models import towers
  tok = load_tokenizer(tokenizer_dir)
  first, prints = {}, {}
  for name in ("clip", "dinov2", "siglip"):
    model = {**MODEL, "vision": {**MODEL["vision"], "tower": name}}
    it = make_train_iterator(_demo_cfg(demo_data_dir), tok, model, 0, 1, seed=5)
    t = towers.tower(name)
    assert (it._spec.image_mean, it._spec.image_std) == (t.image_mean, t.image_std)  # pylint: disable=protected-access
    first[name], prints[name] = next(it)["images"], it.data_fingerprint
    it.close()
  clip = towers.tower("clip")
  raw = first["clip"] * np.asarray(clip.image_std) + np.asarray(clip.image_mean)  # [0, 1] pixels
  for name in ("dinov2", "siglip"):
    t = towers.tower(name)
    np.testing.assert_allclose(first[name], (raw - np.asarray(t.image_mean)) / np.asarray(t.image_std),
                               atol=2e-5, rtol=0)
    assert np.abs(first[name] - first["clip"]).max() > 0.05
  assert len(set(prints.values())) == 3

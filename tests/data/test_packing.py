"""Sequence packing (issue #13): the packer's limits and determinism, the packed batch format,
exact resume of the carried-over buffer, and packing groups: the same global batches for any
number of hosts."""
import json

import numpy as np
import pytest

from acformer_jax import batch as batch_lib
from acformer_jax.data import make_train_iterator, packing, sampler
from acformer_jax.data.tokenizer import load_tokenizer

MODEL = {"vision": {"image_size": 56, "patch_size": 14, "num_heads": 4},
         "connector": {"type": "pr", "num_queries": 4}, "image_token_id": 32000}


def _sample(i, n, image):
  return {"input_ids": np.full(n, i + 10, np.int32), "labels": np.arange(n, dtype=np.int32),
          "image": np.full((2, 2, 3), i, np.float32) if image else None, "i": i}


def _stream(seed, count=400):
  rng = np.random.default_rng(seed)
  return [_sample(i, int(rng.integers(5, 60)), bool(rng.random() < 0.7)) for i in range(count)]


def _pack_all(samples, rows, spec, max_batches=10_000):
  it, carried, out = iter(samples), [], []
  for _ in range(max_batches):
    got, carried, exhausted = packing.pack_batch(carried, it, rows, spec)
    out.append((got, [s["i"] for s in carried]))
    if exhausted and not carried:
      break
  return out


def test_capacity_lookahead_and_every_sample_once():
  spec = packing.PackSpec(max_length=100, max_images=2, lookahead=6)
  samples = _stream(0)
  batches = _pack_all(samples, 3, spec)
  placed_at = {}
  for k, (rows, carried) in enumerate(batches):
    assert len(carried) <= spec.lookahead
    for row in rows:
      assert sum(len(s["input_ids"]) for s in row) <= 100
      assert sum(s["image"] is not None for s in row) <= 2
      for s in row:
        assert s["i"] not in placed_at
        placed_at[s["i"]] = k
  assert sorted(placed_at) == list(range(len(samples)))
  # Bounded delay: a sample read by batch k is placed by batch k + ceil(lookahead / rows)
  # (the oldest `rows` waiting samples always find a row in the next batch).
  read = 0
  for k, (rows, carried) in enumerate(batches):
    read = max([read] + [s["i"] for row in rows for s in row] + carried)
    late = [i for i in range(read + 1) if placed_at[i] > k + -(-spec.lookahead // 3)]
    assert not late
  assert np.mean([sum(len(s["input_ids"]) for s in r) / 100 for rows, _ in batches[:-3]
                  for r in rows]) > 0.85  # it really packs


def test_deterministic_and_text_only_takes_no_image_slot():
  spec = packing.PackSpec(max_length=100, max_images=2, lookahead=6)
  a, b = _pack_all(_stream(1), 4, spec), _pack_all(_stream(1), 4, spec)
  ids = lambda bs: [[[s["i"] for s in r] for r in rows] for rows, _ in bs]  # noqa: E731
  assert ids(a) == ids(b)
  # One image slot: a second image waits, a text-only sample still joins the row.
  one = packing.PackSpec(max_length=40, max_images=1, lookahead=4)
  rows, carried, _ = packing.pack_batch([], iter([_sample(0, 10, True), _sample(1, 10, True),
                                                   _sample(2, 10, False), _sample(3, 10, False)]), 1, one)
  assert [s["i"] for s in rows[0]] == [0, 2, 3] and [s["i"] for s in carried] == [1]
  with pytest.raises(ValueError, match="cannot fit a row"):
    packing.pack_batch([], iter([_sample(0, 41, False)]), 1, one)


def test_one_per_row_is_the_plain_order():
  spec = packing.PackSpec(max_length=100, max_images=1, lookahead=0, one_per_row=True)
  batches = _pack_all(_stream(2, 40), 8, spec)
  assert [[s["i"] for r in rows for s in r] for rows, _ in batches[:5]] == [
      list(range(k * 8, k * 8 + 8)) for k in range(5)]
  assert all(not carried for _, carried in batches)


def test_collate_format():
  rows = [[_sample(0, 5, True), _sample(1, 4, False), _sample(2, 3, True)], [_sample(3, 6, False)]]
  shape = batch_lib.BatchShape(rows=3, length=16, images_per_row=2, image_size=2)
  b = packing.collate(rows, shape, pad_id=0, indices=[[7, 8, 9], [4]])
  assert batch_lib.check(b, shape) == shape
  np.testing.assert_array_equal(b["segment_ids"][0], [1] * 5 + [2] * 4 + [3] * 3 + [0] * 4)
  np.testing.assert_array_equal(b["positions"][0], [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 0, 0, 0, 0])
  np.testing.assert_array_equal(b["labels"][0], [-100, 1, 2, 3, 4, -100, 1, 2, 3, -100, 1, 2] + [-100] * 4)
  np.testing.assert_array_equal(b["input_ids"][0], [10] * 5 + [11] * 4 + [12] * 3 + [0] * 4)
  assert b["image_mask"].tolist() == [[True, True], [False, False], [False, False]]
  assert (b["images"][0, 1] == 2).all() and not b["images"][1:].any()
  np.testing.assert_array_equal(b["sample_index"][0], [7] * 5 + [8] * 4 + [9] * 3 + [-1] * 4)
  assert (b["segment_ids"][2] == 0).all() and (b["labels"][2] == -100).all()
  assert packing.efficiency(b) == {"tokens": 18, "token_slots": 48, "images": 2, "image_slots": 6}


def _packed_cfg(data_dir, **kw):
  cfg = {"builder": "acformer_demo/qa_tiny", "data_dir": str(data_dir), "max_length": 320,
         "global_batch_size": 4, "num_workers": 2, "packing": True, "max_images_per_row": 2,
         "packing_lookahead": 8}
  cfg.update(kw)
  return cfg


def test_packed_iterator_resumes_exactly(demo_data_dir, tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  ref_it = make_train_iterator(_packed_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=3, with_index=True)
  ref = [next(ref_it) for _ in range(7)]
  for b in ref:
    assert b["images"].shape == (4, 2, 56, 56, 3)
    assert (b["segment_ids"].max(1) >= 2).any()  # rows hold several samples
  first = make_train_iterator(_packed_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=3, with_index=True)
  for _ in range(3):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  first.close()
  carried = [g["carried"] for g in state["groups"]]
  assert len(carried) == 4 and any(carried)  # default packing_groups = gcd(4, 8): 1 row each
  assert all(len(c) <= 2 for c in carried)  # ceil(8 / 4) record indices each, not arrays
  again = make_train_iterator(_packed_cfg(demo_data_dir), tok, MODEL, 0, 1, seed=3, with_index=True)
  again.set_state(state)
  for k in range(3, 7):
    got = next(again)
    for key, v in ref[k].items():
      np.testing.assert_array_equal(got[key], v, err_msg=f"batch {k} key {key}")
  assert again.get_state() == ref_it.get_state()
  stats = ref_it.stats()
  tokens = sum(int((b["segment_ids"] > 0).sum()) for b in ref)
  assert stats["token_efficiency"] == pytest.approx(tokens / (7 * 4 * 320))
  assert stats["image_efficiency"] == pytest.approx(sum(int(b["image_mask"].sum()) for b in ref) / (7 * 8))
  assert stats["last_token_efficiency"] == pytest.approx((ref[-1]["segment_ids"] > 0).mean())
  with pytest.raises(ValueError, match="fingerprint.packing"):
    make_train_iterator(_packed_cfg(demo_data_dir, packing_lookahead=4), tok, MODEL, 0, 1,
                        seed=3).set_state(state)
  for it in (ref_it, again):
    it.close()


def _take(it, n):
  out = [next(it) for _ in range(n)]
  return out, json.loads(json.dumps(it.get_state()))


def _concat(*host_batches):
  return {k: np.concatenate([b[k] for b in host_batches]) for k in host_batches[0]}


def test_packed_batches_do_not_depend_on_the_host_count(demo_data_dir, tokenizer_dir):
  """Packing groups: 1 host x 4 rows and 2 hosts x 2 rows form the same global batches, and a
  host resumed from its state continues them exactly."""
  tok = load_tokenizer(tokenizer_dir)
  cfg = _packed_cfg(demo_data_dir, packing_groups=2, packing_lookahead=4)
  make = lambda host, count: make_train_iterator(cfg, tok, MODEL, host, count, seed=5,  # noqa: E731
                                                 with_index=True)
  one, _ = _take(make(0, 1), 6)
  hosts = [make(0, 2), make(1, 2)]
  firsts = [_take(h, 3) for h in hosts]
  states = [s for _, s in firsts]
  assert [[g["group"] for g in s["groups"]] for s in states] == [[0], [1]]
  resumed = [make(p, 2) for p in (0, 1)]
  for it, state in zip(resumed, states):
    it.set_state(state)
  rest = [_take(it, 3)[0] for it in resumed]
  two = [_concat(a, b) for a, b in zip(firsts[0][0] + rest[0], firsts[1][0] + rest[1])]
  assert sum(int(b["segment_ids"].max(1).sum()) for b in one) > 2 * 6 * 4 / 2  # really packed
  for k, (a, b) in enumerate(zip(one, two)):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(b[key], a[key], err_msg=f"batch {k} key {key}")
  with pytest.raises(ValueError, match="data.packing_groups=2 must be a multiple of the process count"):
    make_train_iterator(cfg, tok, MODEL, 0, 4)
  with pytest.raises(ValueError, match="data.packing_groups=3 must be >= 1 and divide"):
    make_train_iterator(_packed_cfg(demo_data_dir, packing_groups=3), tok, MODEL, 0, 1)
  for it in hosts + resumed:
    it.close()


def test_packing_groups_default():
  assert sampler.packing_groups(128, 1) == sampler.packing_groups(128, 4) == 8
  assert sampler.packing_groups(4, 2) == 4 and sampler.packing_groups(12, 1) == 4
  assert sampler.packing_groups(48, 16) == 48  # 16 hosts cannot share 8 groups: one per row
  assert sampler.packing_groups(8, 2, packing=False) == 2  # unpacked: one group per host


def test_every_host_packs_its_own_shard(demo_data_dir, tokenizer_dir):
  tok = load_tokenizer(tokenizer_dir)
  cfg = _packed_cfg(demo_data_dir, num_epochs=1, drop_remainder=False)
  order = sampler.epoch_order(256, 0, 11)
  seen = []
  for host in (0, 1):
    it = make_train_iterator(cfg, tok, MODEL, host, 2, seed=11, with_index=True)
    records = []
    for b in it:
      assert b["input_ids"].shape == (2, 320)  # local rows = 4 / 2
      for row, seg in zip(b["sample_index"], b["segment_ids"]):
        for s in range(1, seg.max() + 1):
          ids = np.unique(row[seg == s])
          assert len(ids) == 1
          records.append(int(ids[0]))
    assert len(set(records)) == len(records)
    groups = (2 * host, 2 * host + 1)  # 4 groups (gcd(4, 8)), two per host
    assert set(records) == {int(i) for g in groups for i in sampler.host_shard(order, 4, g, 4)}
    seen.append(set(records))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(256))

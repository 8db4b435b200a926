"""KV-cache generation (docs/benchmarks.md 1, docs/jax_practices.md item 11): equals the full forward,
batched == one-by-one, one compile per bucket, EOS / stop sequences, sharded cache."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax import sharding
from acformer_jax.inference import engine as E
from tests.inference import tiny_model as T

MAX_NEW = 6
BUCKET = 32   # every prompt below fits one bucket, so the shared engines compile once
TOTAL = 48    # fixed length of the reference forward


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda p, img, x, m: model.apply({"params": p}, img, x, attention_mask=m))


@pytest.fixture(scope="module")
def eng1(tiny):
  return E.Engine(tiny[0], tiny[1], batch_size=1, bucket_multiple=BUCKET)


@pytest.fixture(scope="module")
def eng4(tiny):
  return E.Engine(tiny[0], tiny[1], batch_size=4, bucket_multiple=BUCKET)


def reference_greedy(model, params, ids, img, max_new, eos=T.LLM.eos_token_id):
  """Greedy by re-running the full (uncached) forward on the growing sequence.

  The sequence is right-padded to one fixed length so the forward compiles once; with
  causal attention the pads after the last real token cannot change its logits.
  """
  s = T.VISION.image_size
  images = jnp.asarray((img if img is not None else np.zeros((s, s, 3), np.float32))[None])
  seq, scores = list(ids), []
  for _ in range(max_new):
    x = np.zeros((1, TOTAL), np.int32)
    m = np.zeros((1, TOTAL), np.int32)
    x[0, :len(seq)], m[0, :len(seq)] = seq, 1
    logits = np.asarray(_forward(model)(params, images, x, m))[0, len(seq) - 1]
    scores.append(logits)
    tok = int(logits.argmax())
    seq.append(tok)
    if tok == eos:
      break
  return seq[len(ids):], np.stack(scores)


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text_only"])
def test_greedy_with_cache_equals_full_forward(tiny, eng1, with_image):
  model, params = tiny
  ids = T.prompt(7, image_at=1 if with_image else None, seed=1)
  img = T.image(1) if with_image else None
  res, = eng1.generate([E.Request(ids, img)], max_new_tokens=MAX_NEW, return_scores=True)
  want, want_scores = reference_greedy(model, params, ids, img, MAX_NEW)
  ended = [T.LLM.eos_token_id] if res.finish_reason == "eos" else []
  assert res.tokens + ended == want
  assert len(want) >= 3 and len(set(want)) > 1  # a real continuation, not one repeated id
  np.testing.assert_allclose(res.scores, want_scores, rtol=1e-4, atol=1e-4)


def test_batched_greedy_equals_one_by_one(eng1, eng4):
  reqs = [E.Request(T.prompt(5, image_at=1, seed=2), T.image(2)),
          E.Request(T.prompt(19, seed=3)),                               # text-only row
          E.Request(T.prompt(11, image_at=1, seed=4), T.image(4))]
  got = eng4.generate(reqs, max_new_tokens=MAX_NEW, return_scores=True)  # + 1 dummy row
  for r, g in zip(reqs, got):
    want, = eng1.generate([r], max_new_tokens=MAX_NEW, return_scores=True)
    assert g.tokens == want.tokens
    np.testing.assert_allclose(g.scores, want.scores, rtol=1e-4, atol=1e-4)
  # Different prompts give different continuations (the rows were not mixed up).
  assert len({tuple(g.tokens) for g in got}) == 3


def test_compiles_once_per_bucket(eng1):
  def gen(n, seed, image=True):
    r = E.Request(T.prompt(n, image_at=1 if image else None, seed=seed),
                  T.image(seed) if image else None)
    return eng1.generate([r], max_new_tokens=MAX_NEW, return_scores=True)

  gen(3, 0)  # 12 tokens: the 32 bucket (compiled here unless an earlier test did)
  n0 = eng1.num_traces
  for n, seed in ((8, 1), (15, 2), (BUCKET - T.NV, 3)):  # 17, 24, 32 tokens: same bucket
    gen(n, seed)
  assert eng1.num_traces == n0
  gen(40, 4)  # 49 tokens -> the 64 bucket: prefill and decode loop traced once each
  assert eng1.num_traces == n0 + 2
  gen(30, 5)
  gen(BUCKET + 1, 6, image=False)
  assert eng1.num_traces == n0 + 3  # text-only prefill (no vision); decode loop shared


def test_stops_on_eos_and_on_stop_sequence(tiny, eng1):
  model, params = tiny
  ids = T.prompt(6, image_at=1, seed=7)
  free, _ = reference_greedy(model, params, ids, T.image(7), MAX_NEW, eos=-1)
  j = next(j for j in range(2, MAX_NEW) if free[j] not in free[:j])  # a first occurrence
  req = [E.Request(ids, T.image(7))]
  # EOS = that token: generation stops right after it and drops it.
  res, = eng1.generate(req, max_new_tokens=MAX_NEW, eos_token_id=free[j], return_scores=True)
  assert res.finish_reason == "eos" and res.tokens == free[:j]
  # Stop token sequence (checked inside the loop): the pair ending at j ends the answer.
  res, = eng1.generate(req, max_new_tokens=MAX_NEW, return_scores=True,
                       stop_token_ids=[[free[j - 1], free[j]], [149, 148, 147]])
  assert res.finish_reason == "stop" and res.tokens == free[:j - 1]
  res, = eng1.generate(req, max_new_tokens=MAX_NEW, return_scores=True,
                       stop_token_ids=[[free[j], free[j]]])  # never generated
  assert res.finish_reason == "length" and res.tokens == free


def test_sharded_engine_matches_and_cache_is_sharded(tiny, eng4):
  model, params = tiny
  mesh = sharding.make_mesh((2, 2, 2))
  placed = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  eng = E.Engine(model, placed, batch_size=4, bucket_multiple=BUCKET, mesh=mesh)
  reqs = [E.Request(T.prompt(4 + 3 * i, image_at=1, seed=20 + i), T.image(20 + i))
          for i in range(3)] + [E.Request(T.prompt(9, seed=24))]
  got = eng.generate(reqs, max_new_tokens=MAX_NEW, return_scores=True)
  want = eng4.generate(reqs, max_new_tokens=MAX_NEW, return_scores=True)
  assert [g.tokens for g in got] == [w.tokens for w in want]
  eng.batch_size = 3  # rows are padded to a multiple of data * fsdp = 4: same program
  n = eng.num_traces
  assert eng.rows == 4 and len(eng.generate(reqs[:3], max_new_tokens=MAX_NEW,
                                            return_scores=True)) == 3
  assert eng.num_traces == n
  ids, mask = E.left_pad([r.input_ids for r in reqs], BUCKET, 0)
  imgs = np.stack([r.image if r.image is not None else reqs[0].image for r in reqs])
  with eng.programs.context():
    _, cache, _, _ = eng.programs.prefill(placed, *eng._place(imgs, ids, mask), extra=MAX_NEW - 1,
                                  with_images=True)
  spec = tuple(cache["k"].sharding.spec) + (None,) * 5  # [layers, batch, kv_heads, slots, dim]
  assert spec[:5] == (None, ("data", "fsdp"), "tensor", None, None), spec


def test_bad_requests_are_rejected(eng1):
  eng = eng1
  with pytest.raises(ValueError, match="request 0: 3 image tokens"):
    eng.generate([E.Request([1, 150, 150, 150, 5], T.image(0))], max_new_tokens=2)
  with pytest.raises(ValueError, match="request 1: the prompt has image tokens but no image"):
    eng.generate([E.Request(T.prompt(3)), E.Request(T.prompt(3, image_at=1))], max_new_tokens=2)
  with pytest.raises(ValueError, match=r"image shape \(8, 8, 3\)"):
    eng.generate([E.Request(T.prompt(3, image_at=1), np.zeros((8, 8, 3)))], max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    eng.generate([E.Request(T.prompt(3))], max_new_tokens=0)


def test_left_pad_and_buckets():
  ids, mask = E.left_pad([[5, 6], [7]], 4, 0)
  np.testing.assert_array_equal(ids, [[0, 0, 5, 6], [0, 0, 0, 7]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1]])
  assert [E.bucket_length(n, 64) for n in (1, 64, 65, 200)] == [64, 64, 128, 256]
  with pytest.raises(ValueError, match="more than the bucket"):
    E.left_pad([[1, 2, 3]], 2, 0)


def test_stop_sequence_array_pads_to_a_shared_shape():
  arr = E.stop_sequence_array([[5, 6], [7]])
  assert arr.shape == (4, 4)
  np.testing.assert_array_equal(arr[0], [-1, -1, 5, 6])
  np.testing.assert_array_equal(arr[1], [-1, -1, -1, 7])
  np.testing.assert_array_equal(arr[2], [-1, -1, -1, -2])  # padding row: never matches
  assert E.stop_sequence_array([]).shape == (4, 4)
  with pytest.raises(ValueError, match="negative"):
    E.stop_sequence_array([[3, -200]])

"""select_anchors vs the official per-sample loop (docs/method.md 1.3)."""
import jax
import numpy as np
import pytest

from acformer_jax.models import select_anchors

from torch_reference import official_select

HEADS, PATCHES = 16, 576   # ViT-L/14-336: 16 heads, 577 tokens
MAPS, BATCH = 100, 4       # 100 maps per budget, in batches of 4


def _cls_attention(rng, n):
  """Random CLS rows that look like attention: softmax of peaked logits, no ties
  (rows that float32 rounding left with a tie are drawn again)."""
  out = np.empty((n, HEADS, PATCHES), np.float32)
  for i in range(n):
    peaks = rng.integers(0, PATCHES, size=8)  # shared favourites: later heads fall back
    for h in range(HEADS):
      while True:
        logits = rng.standard_normal(PATCHES) * 2.0
        logits[peaks] += 4.0
        row = np.exp(logits - logits.max())
        row = (row / row.sum()).astype(np.float32)
        if len(np.unique(row)) == PATCHES:
          break
      out[i, h] = row
  return out


@pytest.mark.parametrize("budget", [64, 144, 256, 100, 200])
def test_matches_official_loop_under_jit_and_traces_once(budget):
  traces = []

  def fn(a):
    traces.append(a.shape)
    return select_anchors(a, budget)

  jitted = jax.jit(fn)
  maps = _cls_attention(np.random.default_rng(budget), MAPS)
  per_head = budget // HEADS
  for start in range(0, MAPS, BATCH):
    batch = maps[start:start + BATCH]
    got = np.asarray(jitted(batch))
    assert got.dtype == np.int32 and got.shape == (BATCH, 1 + HEADS * per_head)
    for b in range(BATCH):
      want = official_select(batch[b], budget)
      np.testing.assert_array_equal(got[b], want)
  assert len(traces) == 1, traces


def test_later_heads_fall_back_when_favourites_are_taken():
  # Every head prefers the same patches: head h must take the next-best ones.
  scores = np.tile(np.linspace(1.0, 0.0, 12, dtype=np.float32), (1, 3, 1))  # [1, 3, 12]
  got = np.asarray(select_anchors(scores, 6))
  np.testing.assert_array_equal(got, [[0, 1, 2, 3, 4, 5, 6]])


def test_ties_go_to_the_higher_index():
  scores = np.zeros((1, 2, 6), np.float32)
  scores[0, 0, [1, 4]] = 0.5            # tie in head 0: patch 4 (token 5) wins
  scores[0, 1, 2] = 0.9
  got = np.asarray(select_anchors(scores, 2))
  np.testing.assert_array_equal(got, [[0, 3, 5]])
  assert official_select(scores[0], 2) == [0, 3, 5]


def test_rejects_bad_budget_and_shape():
  a = np.ones((1, 4, 8), np.float32)
  with pytest.raises(ValueError, match="anchors per head"):
    select_anchors(a, 3)
  with pytest.raises(ValueError, match="anchors per head"):
    select_anchors(a, 40)
  with pytest.raises(ValueError, match=r"\[batch, heads, num_patches\]"):
    select_anchors(a[0], 4)

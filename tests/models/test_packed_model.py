"""Packed rows (issue #13): the same loss and gradients as one sample per row, and no sample
sees another (MultimodalLM with segment_ids / image_mask, LlamaModel's segment mask)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax import batch as batch_lib
from acformer_jax import config as C
from acformer_jax.data import packing
from acformer_jax.models import MultimodalLM
from acformer_jax.trainer import loss as loss_lib

VISION = C.VisionConfig(image_size=28, patch_size=7, hidden_size=16, intermediate_size=32,
                        num_layers=2, num_heads=2)   # 16 patches, one ViT block runs
LLM = C.LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2)
IMAGE_ID = 64
CONNECTORS = {"acformer": C.ConnectorConfig(type="acformer", num_queries=4, depth=1, heads=2,
                                            dim_head=8, ff_mult=2),
              "mlp2x_gelu": C.ConnectorConfig(type="mlp2x_gelu")}


def _model(name):
  cfg = C.ModelConfig(vision=VISION, llm=LLM, connector=CONNECTORS[name], image_token_id=IMAGE_ID)
  return MultimodalLM(cfg), C.num_visual_tokens(cfg)


def _samples(nv, seed=0):
  """Six samples: four with an image (at different offsets), two text-only; random lengths
  and supervised spans."""
  rng = np.random.default_rng(seed)
  out = []
  for i, (with_image, text) in enumerate([(1, 7), (0, 9), (1, 4), (1, 11), (0, 5), (1, 6)]):
    pre = int(rng.integers(0, 3))
    ids = np.concatenate([[1], rng.integers(3, LLM.vocab_size, pre),
                          np.full(nv * with_image, IMAGE_ID), rng.integers(3, LLM.vocab_size, text)])
    labels = np.full(ids.shape, -100)
    labels[-(text // 2 + 1):] = ids[-(text // 2 + 1):]
    image = rng.standard_normal((VISION.image_size,) * 2 + (3,)).astype(np.float32) if with_image else None
    out.append({"input_ids": ids.astype(np.int32), "labels": labels.astype(np.int32), "image": image,
                "id": i})
  return out


def _batches(samples):
  """The same samples unpacked (one per row, M=1) and packed (3 rows, M=3)."""
  t_one = max(len(s["input_ids"]) for s in samples)
  one = packing.collate([[s] for s in samples],
                        batch_lib.BatchShape(len(samples), t_one + 2, 1, VISION.image_size), 0)
  rows = [[samples[0], samples[1], samples[2]], [samples[3], samples[4]], [samples[5]]]
  t = max(sum(len(s["input_ids"]) for s in r) for r in rows) + 3
  packed = packing.collate(rows, batch_lib.BatchShape(3, t, 3, VISION.image_size), 0)
  return one, packed


@functools.lru_cache(maxsize=None)
def _params(name):
  """Random params of connector ``name``'s model plus 0.05 x N(0, 1) on every leaf (no zero
  biases: every trainable leaf gets a gradient). Computed once and shared by the tests (none
  depends on particular values): ``model.init`` as one compiled program (eagerly it compiles
  every op on its own), the noise drawn on the host."""
  model, nv = _model(name)
  one, _ = _batches(_samples(nv))
  params = jax.jit(lambda a, b: model.init(jax.random.key(0), a, b)["params"])(
      one["images"], one["input_ids"])
  rs = np.random.RandomState(1)
  return jax.tree.map(lambda x: x + (0.05 * rs.standard_normal(x.shape)).astype(np.float32),
                      jax.device_get(params))


def _loss(model, params, b):
  logits = model.apply({"params": params}, b["images"], b["input_ids"], positions=b["positions"],
                       segment_ids=b["segment_ids"], image_mask=b["image_mask"])
  s, c, _ = loss_lib.token_loss(logits, loss_lib.shifted_targets(b["labels"]))
  return s / c, c


@pytest.mark.parametrize("connector", ["acformer", "mlp2x_gelu"])
def test_packed_loss_and_gradients_equal_unpacked(connector):
  model, nv = _model(connector)
  samples = _samples(nv)
  one, packed = _batches(samples)
  params = _params(connector)
  grad = jax.jit(jax.value_and_grad(lambda p, b: _loss(model, p, b), has_aux=True))
  (l1, c1), g1 = grad(params, one)
  (l2, c2), g2 = grad(params, packed)
  assert int(c1) == int(c2) > 0  # the same supervised tokens, no cross-sample target
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g1),
                        jax.tree.leaves(g2)):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.abs(a).max()
    key = jax.tree_util.keystr(path[0])
    if "vision" in key:
      assert scale == 0 and np.abs(b).max() == 0, key  # frozen tower
      continue
    assert scale > 0, key
    assert np.abs(a - b).max() <= 1e-5 * scale, (key, np.abs(a - b).max() / scale)


def test_changing_one_sample_leaves_the_others_bit_identical():
  """AcFormer (its anchors come from each image's own attention); also: the pixels of unused
  image slots are never read."""
  model, nv = _model("acformer")
  samples = _samples(nv, seed=3)
  _, packed = _batches(samples)
  params = _params("acformer")
  fwd = jax.jit(lambda b: model.apply({"params": params}, b["images"], b["input_ids"],
                                      positions=b["positions"], segment_ids=b["segment_ids"],
                                      image_mask=b["image_mask"]))
  ref = np.asarray(fwd(packed))
  seg = packed["segment_ids"]
  # Sample 2 of row 0 (segment 2, text-only) and sample 3 of row 0 (segment 3, image slot 1).
  for target, change_image in ((2, False), (3, True)):
    other = {k: v.copy() for k, v in packed.items()}
    where = seg[0] == target
    text = where & (other["input_ids"][0] != IMAGE_ID)
    other["input_ids"][0, text] = (other["input_ids"][0, text] + 7) % LLM.vocab_size
    if change_image:
      other["images"][0, 1] = -other["images"][0, 1] + 0.3
    got = np.asarray(fwd(other))
    assert np.abs(got[0, where] - ref[0, where]).max() > 1e-4  # the change shows in its segment
    others = seg > 0  # every token of every other sample (padding logits are never read)
    others[0] &= ~where
    np.testing.assert_array_equal(got[others], ref[others])
  noisy = dict(packed, images=np.where(packed["image_mask"][:, :, None, None, None],
                                       packed["images"], 9.0).astype(np.float32))
  assert not packed["image_mask"].all()
  np.testing.assert_array_equal(np.asarray(fwd(noisy)), ref)


def test_segment_ids_none_keeps_the_inference_mask():
  """Without segment_ids a 1-sample row gives the logits of the same row with segment 1."""
  model, nv = _model("acformer")
  one, _ = _batches(_samples(nv, seed=6))
  params = _params("acformer")
  mask = (one["segment_ids"] > 0).astype(np.int32)
  plain = jax.jit(lambda p, b: model.apply({"params": p}, b["images"][:, 0], b["input_ids"], mask))(
      params, one)
  seg = jax.jit(lambda p, b: model.apply({"params": p}, b["images"], b["input_ids"],
                                         positions=b["positions"], segment_ids=b["segment_ids"],
                                         image_mask=b["image_mask"]))(params, one)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(seg)[real], np.asarray(plain)[real], rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match="cache"):
    cache = jnp.zeros((LLM.num_layers, 1, LLM.num_kv_heads, 4, LLM.resolved_head_dim))
    model.apply({"params": params}, jnp.zeros((1, 4, LLM.hidden_size)), jnp.zeros((1, 4), jnp.int32),
                jnp.ones((1, 4), bool), {"k": cache, "v": cache}, 0, segment_ids=jnp.ones((1, 4), jnp.int32),
                method=MultimodalLM.decode)

"""The one train batch spec (acformer_jax/batch.py): shapes from the config, validation with
clear errors, logical-axis shardings, abstract structs and host -> device placement."""
import jax
import numpy as np
import pytest

from acformer_jax import batch as B
from acformer_jax import sharding
from acformer_jax.trainer import experiment


def _config(packing: bool):
  c = experiment.base_config()
  c.train.global_batch_size = 8
  c.data.max_length = 32
  c.data.packing = packing
  c.data.max_images_per_row = 3
  c.model.vision.image_size = 28
  return c


def test_shapes_from_config_and_empty_batch():
  g = B.global_shape(_config(True))
  assert g == B.BatchShape(rows=8, length=32, images_per_row=3, image_size=28)
  assert B.global_shape(_config(False)).images_per_row == 1  # packing off: one slot
  assert B.host_shape(_config(True), 2).rows == 4
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    B.host_shape(_config(True), 3)
  e = B.empty(g)
  assert set(e) == set(B.KEYS) and B.check(e, g) == g
  assert e["images"].shape == (8, 3, 28, 28, 3) and e["image_mask"].dtype == np.bool_
  assert (e["labels"] == B.IGNORE_INDEX).all() and B.real_tokens(e) == 0 == B.samples(e)


def test_check_names_the_bad_key():
  g = B.BatchShape(2, 16, 2, 28)
  b = B.empty(g)
  with pytest.raises(ValueError, match=r"lacks key\(s\) \['segment_ids'\]"):
    B.check({k: v for k, v in b.items() if k != "segment_ids"})
  with pytest.raises(ValueError, match=r"batch\['positions'\] has dtype int64, expected int32"):
    B.check({**b, "positions": b["positions"].astype(np.int64)})
  with pytest.raises(ValueError, match=r"batch\['labels'\] has shape \(2, 15\), expected \(2, 16\)"):
    B.check({**b, "labels": b["labels"][:, :15]})
  with pytest.raises(ValueError, match=r"images'\] has shape \(2, 2, 28, 28, 3\), expected \(2, 3, 28"):
    B.check(b, B.BatchShape(2, 16, 3, 28))


def test_unpacked_rows_and_counts():
  ids = np.arange(10, dtype=np.int32).reshape(2, 5)
  b = B.unpacked(np.zeros((2, 28, 28, 3), np.float32), ids, ids, image_mask=[True, False])
  assert B.check(b) == B.BatchShape(2, 5, 1, 28)
  assert b["positions"][1].tolist() == [0, 1, 2, 3, 4]
  assert B.real_tokens(b) == 10 and B.real_images(b) == 1 and B.samples(b) == 2
  b["segment_ids"][0, 3:] = [2, 0]  # two samples in row 0 and one pad token
  assert B.real_tokens(b) == 9 and B.samples(b) == 3


def test_shardings_abstract_and_placement():
  mesh = sharding.make_mesh((2, -1, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  specs = B.partition_specs()
  assert all(s[0] == ("data", "fsdp") for s in specs.values())
  assert all(x is None for x in specs["images"][1:])
  g = B.BatchShape(8, 16, 2, 28)
  ab = B.abstract(g, mesh)
  assert ab["images"].shape == (8, 2, 28, 28, 3) and ab["image_mask"].dtype == np.bool_
  host = B.empty(g)
  host["segment_ids"][:, :5] = 1
  dev = B.to_device({**host, "sample_index": np.zeros(8)}, mesh)  # extra keys are dropped
  assert set(dev) == set(B.KEYS)
  for k, v in dev.items():
    assert v.sharding == ab[k].sharding and v.shape == ab[k].shape and v.dtype == ab[k].dtype
    assert v.addressable_shards[0].data.shape[0] == 1  # one row per device
  assert int(jax.device_get(dev["segment_ids"]).sum()) == 40
  with pytest.raises(ValueError, match="lacks key"):
    B.to_device({"images": host["images"]}, mesh)

"""The one experiment builder (trainer/builder.py): train, aot and bench lower the very same
step (same StableHLO text on a CPU mesh); real-token FLOPs from the step's metrics equal
the FLOPs of the same samples run unpacked; padded FLOPs count every slot."""
import numpy as np
import pytest

from acformer_jax import aot, batch as B, sharding
from acformer_jax.benchmarking import workload
from acformer_jax.trainer import flops as flops_lib, loop
from tests.trainer import tiny

T, M = 20, 2


def _config():
  c = workload.config_for_model(tiny.MODEL, max_length=T, global_batch=8, stage=2, steps=10)
  c.data.packing = True
  c.data.max_images_per_row = M
  c.mesh.shape = (2, -1, 1)
  c.init.allow_random = True
  c.train.sharding_tolerance = -1.0
  return c


def _sample(rs, image: bool, text: int):
  ids = [1] + [tiny.MODEL.image_token_id] * (tiny.NV if image else 0) + list(rs.randint(3, 64, text))
  labels = [-100] * (len(ids) - text) + ids[len(ids) - text:]
  return np.array(ids, np.int32), np.array(labels, np.int32), image


def _packed_batch(seed=0, rows=8):
  """Rows of 1-3 samples (some text-only), at most M images, then padding."""
  rs = np.random.RandomState(seed)
  out = B.empty(B.BatchShape(rows, T, M, 28))
  lengths = []
  for r in range(rows):
    t = m = 0
    for seg in range(1, 4):
      ids, labels, image = _sample(rs, image=(seg + r) % 3 != 0, text=int(rs.randint(2, 5)))
      if t + len(ids) > T or m + image > M:
        break
      out["input_ids"][r, t:t + len(ids)] = ids
      out["labels"][r, t:t + len(ids)] = labels
      out["segment_ids"][r, t:t + len(ids)] = seg
      out["positions"][r, t:t + len(ids)] = np.arange(len(ids))
      if image:
        out["images"][r, m] = rs.randn(28, 28, 3)
        out["image_mask"][r, m] = True
        m += 1
      lengths.append((len(ids), image))
      t += len(ids)
  return out, lengths


@pytest.fixture(scope="module")
def built():
  config = _config()
  mesh = sharding.mesh_from_config(config)
  return config, mesh, loop.build(config, mesh)


def test_train_aot_and_bench_lower_the_same_step(built):
  config, mesh, train_ex = built
  train_hlo = train_ex.lower().as_text()
  assert f"tensor<8x{M}x28x28x3xf32>" in train_hlo and f"tensor<8x{T}xi32>" in train_hlo
  aot_hlo = aot.experiment_on(config, mesh).lower().as_text()
  batch, _ = _packed_batch()
  bundle = workload.build_step(config, batch, mesh=mesh)
  assert bundle.lowered.as_text() == train_hlo
  assert aot_hlo == train_hlo
  # Real FLOPs from the step's own metrics equal the host count of the same batch.
  metrics = {k: float(v) for k, v in bundle.run().items()}
  assert metrics["tokens"] == B.real_tokens(batch) and metrics["images"] == B.real_images(batch)
  assert metrics["samples"] == B.samples(batch)
  want = bundle.experiment.batch_flops(batch)
  assert train_ex.real_flops(metrics).total == pytest.approx(want.total, rel=1e-6)


def test_real_flops_are_the_unpacked_samples_flops(built):
  _, _, ex = built
  batch, lengths = _packed_batch()
  got = ex.batch_flops(batch)
  mc, tr = ex.mc, ex.llm_trainable
  unpacked = [flops_lib.train_step_flops(mc, 1, n, llm_trainable=tr, images_per_row=int(im))
              for n, im in lengths]
  assert got.total == pytest.approx(sum(u.total for u in unpacked), rel=1e-12)
  assert got.vit == pytest.approx(sum(u.vit for u in unpacked), rel=1e-12)
  # Padded: every token slot of every row as one sequence, every image slot encoded.
  pad = ex.padded_flops
  assert pad == flops_lib.train_step_flops(mc, 8, T, llm_trainable=True, images_per_row=M)
  assert pad.total > got.total and ex.batch_shape == B.BatchShape(8, T, M, 28)


def test_mesh_is_resolved_in_one_place():
  assert sharding.resolve_mesh_shape((1, -1, 2), (2, 1, 1), 32) == ((1, 8, 2), (2, 1, 1))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.resolve_mesh_shape((-1, -1, 1), (1, 1, 1), 8)
  with pytest.raises(ValueError, match=r"needs 6 devices, but 8 are available"):
    sharding.make_mesh((2, 3, 1))
  mesh = sharding.make_mesh((2, -1, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}

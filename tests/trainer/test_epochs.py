"""``train.epochs`` (issue #15 item 4): steps from the dataset size, epochs reshuffled
deterministically, and a run whose data ends early still finishes with a checkpoint, the
export and ``summary.json``."""
import json

import numpy as np
import pytest

from acformer_jax.data import epochs
from acformer_jax.data.train_data import make_train_iterator
from acformer_jax.trainer import loop
from acformer_jax.trainer.validate import ConfigError
from tests.trainer import tiny


def test_steps_for_epochs_and_the_packer_hook():
  assert epochs.batches_per_epoch(256, 64) == 4
  assert epochs.steps_for_epochs(3, 100, 64) == 4  # epochs chain: floor(300 / 64)
  assert epochs.steps_for_epochs(2, 256, 64, packer=lambda n: n // 4) == 2
  with pytest.raises(ValueError, match="less than one global batch"):
    epochs.steps_for_epochs(1, 10, 64)


@pytest.mark.parametrize("steps,n_epochs,message", [
    (4, 2, r"train.steps=4 and train.epochs=2 are both set"),
    (None, None, r"neither train.steps nor train.epochs"),
    (None, 0, r"train.epochs=0 must be >= 1"),
])
def test_steps_or_epochs_not_both(demo, steps, n_epochs, message):
  config = tiny.experiment_config(*demo, steps=4)
  config.train.steps = steps
  config.train.epochs = n_epochs
  with pytest.raises(ConfigError, match=message):
    loop.validate(config, num_devices=8)


def test_epoch_boundaries_reshuffle_deterministically(demo):
  data_dir, tok = demo
  config = tiny.experiment_config(data_dir, tok, steps=1)
  mc = loop.validate(config, num_devices=8)
  cfg = dict(loop.data_config(config), global_batch_size=128, num_epochs=2, num_workers=0)

  def order():
    it = make_train_iterator(cfg, None, mc, with_index=True)
    out = np.concatenate([b["sample_index"][:, 0] for b in it])  # unpacked: a row is one sample
    it.close()
    return out

  a, b = order(), order()
  np.testing.assert_array_equal(a, b)
  assert len(a) == 512 and sorted(a[:256]) == sorted(a[256:]) == list(range(256))
  assert not np.array_equal(a[:256], a[256:])


def test_epochs_run_and_data_that_ends_early_both_finish(demo, tmp_path):
  data_dir, tok = demo
  config = tiny.experiment_config(data_dir, tok, steps=8, every=100)
  config.train.global_batch_size = 64  # 256 samples: 4 steps per epoch
  config.train.steps = None
  config.train.epochs = 2
  config.checkpoint.export = True
  s = loop.run(config, tmp_path / "epochs")
  assert s["status"] == "completed" and s["total_steps"] == 8 and s["step"] == 8
  assert not s["data_exhausted"] and s["last_checkpoint"] == 8 and s["export_dir"]
  # data.num_epochs=1 with more steps than one epoch: used to end in a bare StopIteration.
  short = tiny.experiment_config(data_dir, tok, steps=8, every=100)
  short.train.global_batch_size = 64
  short.data.num_epochs = 1
  short.checkpoint.export = True
  work = tmp_path / "short"
  s = loop.run(short, work)
  assert s["status"] == "completed" and s["data_exhausted"] and s["step"] == 4
  assert s["last_checkpoint"] == 4
  assert json.loads((work / "summary.json").read_text())["step"] == 4
  assert (work / "export" / "params").is_dir() and (work / "export" / "params_checksums.json").is_file()

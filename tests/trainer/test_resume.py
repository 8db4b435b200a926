"""The main job on the real data pipeline (docs/jax_practices.md items 5-6, 14): a packed run
(issue #13: several samples per row, the packer's carried-over buffer in the checkpoint)
killed with SIGKILL and resumed ends bit-identical to an uninterrupted run (same data order),
and the NaN guard halts with the last good checkpoint as the newest one."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from acformer_jax.trainer import checkpoint as ckpt_lib
from acformer_jax.trainer import loop
from tests.trainer import tiny

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS, EVERY = 8, 3
# qa_tiny samples are 108-143 tokens here: two per 256-token row, a small look-ahead buffer.
PACKED = {"packing": True, "max_length": 256, "max_images_per_row": 2, "packing_lookahead": 4}


def packed_config(data_dir, tok, **kw):
  c = tiny.experiment_config(data_dir, tok, **kw)
  c.data.update(PACKED)
  return c


def _final(workdir, config):
  """The newest checkpoint of a run, restored on the run's own mesh, on the host."""
  b = loop.build(config)
  got = ckpt_lib.CheckpointStore(pathlib.Path(workdir) / "checkpoints", save_every=EVERY,
                                 keep=10).restore_latest(b.abstract_state)
  return got.step, jax.device_get(got.state), got.data_state


def _assert_bit_identical(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_sigkill_and_resume_is_bit_identical(demo, tmp_path):
  data_dir, tok = demo
  config = packed_config(data_dir, tok, steps=STEPS, every=EVERY)
  ref = loop.run(config, tmp_path / "ref")  # uninterrupted; also fills the compile cache
  assert ref["status"] == "completed" and ref["step"] == STEPS
  assert ref["data"]["token_efficiency"] > 0.6 and ref["data"]["last_samples_per_row"] > 1.2

  cfg_file = tmp_path / "cfg.py"
  cfg_file.write_text(
      "from tests.trainer import tiny\n\n\ndef get_config():\n"
      f"  c = tiny.experiment_config({str(data_dir)!r}, {str(tok)!r}, steps={STEPS}, every={EVERY})\n"
      f"  c.data.update({PACKED!r})\n  return c\n")
  work = tmp_path / "killed"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest",
             PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "acformer_jax.train", "--config", str(cfg_file), "--workdir",
         str(work), "--local_device_count=8", "--config.train.debug_step_delay_s=0.5",
         f"--compile_cache={jax.config.jax_compilation_cache_dir or ''}"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  target = work / "checkpoints" / str(EVERY)
  deadline = time.time() + 240
  while not target.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(0.6)  # now somewhere inside step EVERY + 1 or + 2
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
  store = ckpt_lib.CheckpointStore(work / "checkpoints", save_every=EVERY, keep=10)
  killed_at = store.latest_step()
  assert killed_at is not None and killed_at < STEPS
  store.close()

  resumed = loop.run(config, work)
  assert resumed["status"] == "completed" and resumed["step"] == STEPS
  step_a, state_a, data_a = _final(tmp_path / "ref", config)
  step_b, state_b, data_b = _final(work, config)
  assert step_a == step_b == STEPS
  _assert_bit_identical(state_b, state_a)
  assert data_a == data_b
  saved = ckpt_lib.CheckpointStore(work / "checkpoints", save_every=EVERY, keep=10).restore(
      killed_at, loop.build(config).abstract_state)
  groups = ckpt_lib.data_state_for_this_process(saved.data_state)["groups"]
  assert any(g["carried"] for g in groups), \
      "the packer carried nothing over at the resumed step: the buffer was not exercised"


def test_nan_guard_halts_and_keeps_the_last_good_checkpoint(demo, tmp_path):
  data_dir, tok = demo
  config = tiny.experiment_config(data_dir, tok, steps=STEPS, every=EVERY)
  mc = loop.validate(config, num_devices=jax.device_count())
  inner = loop.make_data_iterator(config, mc)

  class PoisonAfter4:
    """The real iterator, but images turn to NaN from the 5th batch on."""

    def __init__(self):
      self.n = 0

    def __next__(self):
      batch = next(inner)
      self.n += 1
      if self.n >= 5:
        batch = dict(batch, images=np.full_like(batch["images"], np.nan))
      return batch

    def __getattr__(self, name):
      return getattr(inner, name)

  summary = loop.run(config, tmp_path / "nan", data_iterator=PoisonAfter4())
  assert summary["status"] == "nan" and summary["step"] == 5
  assert summary["last_checkpoint"] == EVERY
  steps = ckpt_lib.CheckpointStore(tmp_path / "nan" / "checkpoints", save_every=EVERY,
                                   keep=10).all_steps()
  assert steps == [EVERY]


def test_sigterm_saves_now_and_stops(demo, tmp_path):
  data_dir, tok = demo
  config = tiny.experiment_config(data_dir, tok, steps=STEPS, every=100)
  mc = loop.validate(config, num_devices=jax.device_count())
  inner = loop.make_data_iterator(config, mc)

  class TermAt2:
    """The real iterator; the job gets SIGTERM while fetching the 2nd batch."""

    def __init__(self):
      self.n = 0

    def __next__(self):
      self.n += 1
      if self.n == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      return next(inner)

    def __getattr__(self, name):
      return getattr(inner, name)

  previous = signal.getsignal(signal.SIGTERM)
  summary = loop.run(config, tmp_path / "term", data_iterator=TermAt2())
  assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
  assert summary["status"] == "preempted" and summary["last_checkpoint"] == 2
  got = ckpt_lib.CheckpointStore(tmp_path / "term" / "checkpoints", save_every=100,
                                 keep=10).restore_latest(loop.build(config).abstract_state)
  assert got.step == 2 and int(got.state.step) == 2
  assert ckpt_lib.data_state_for_this_process(got.data_state)["batches"] == 2

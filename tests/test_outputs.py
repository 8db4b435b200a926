"""Unwritable outputs fail before any work (issue #15 item 10): convert, export, the trainer's
workdir and ``evaluate run`` name the folder in an ``error:`` instead of failing at the end."""
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from acformer_jax import outputs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _params(value):
  """Tiny-model parameters filled with ``value``, on one device."""
  from acformer_jax import sharding
  from tests.trainer import test_checkpoint as tc
  abstract = tc._abstract(sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]))[0]  # pylint: disable=protected-access
  return jax.tree.map(lambda a: jax.numpy.full(a.shape, value, a.dtype), abstract.params)


@pytest.fixture
def readonly(tmp_path):
  """A folder nobody (root included) can create files in: mode 0555, and immutable when the
  tests run as root (permission bits do not stop root)."""
  d = tmp_path / "ro"
  d.mkdir()
  d.chmod(0o555)
  immutable = False
  if os.geteuid() == 0:
    immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    if not immutable:
      d.chmod(0o755)
      pytest.skip("running as root without chattr: cannot make a folder read-only")
  yield d
  if immutable:
    subprocess.run(["chattr", "-i", str(d)], check=True)
  d.chmod(0o755)


def test_check_writable(readonly, tmp_path):
  assert outputs.check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
  assert not (tmp_path / "new").exists()  # checking creates nothing
  with pytest.raises(outputs.OutputNotWritable, match=f"{readonly} is not writable"):
    outputs.check_writable(readonly / "out")
  with pytest.raises(outputs.OutputNotWritable, match="is not writable"):
    outputs.check_writable(readonly / "a" / "b" / "answers.jsonl", is_dir=False)
  (tmp_path / "f").write_text("x")
  with pytest.raises(outputs.OutputNotWritable, match="is a file"):
    outputs.check_writable(tmp_path / "f" / "out")
  with pytest.raises(ValueError):  # CLIs print ValueErrors as `error:`
    outputs.check_writable(readonly / "out")


def test_convert_and_export_check_before_reading_inputs(readonly, tmp_path):
  from acformer_jax.conversion import exporting, pipeline
  from acformer_jax.trainer import checkpoint as ckpt_lib
  from tests.trainer import tiny
  # The input does not even exist: the output check comes first.
  with pytest.raises(outputs.OutputNotWritable, match="--output folder"):
    pipeline.convert("hf-llava", tmp_path / "missing-input", readonly / "ckpt")
  ckpt = ckpt_lib.export_for_inference(tmp_path / "ckpt", _params(1.0), tiny.MODEL)
  with pytest.raises(outputs.OutputNotWritable, match="--output folder"):
    exporting.export(ckpt, "hf-llava", readonly / "hf")


def test_trainer_export_is_committed_atomically(tmp_path):
  from acformer_jax.trainer import checkpoint as ckpt_lib
  from tests.trainer import tiny
  params = _params(1.0)
  out = ckpt_lib.export_for_inference(tmp_path / "export", params, tiny.MODEL)
  assert (out / "params_checksums.json").is_file()
  bad = dict(params, llm=object())  # not an array: the params write fails midway
  with pytest.raises(Exception):
    ckpt_lib.export_for_inference(tmp_path / "export", bad, tiny.MODEL)
  # The old export is intact and no partial directory is left behind.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
  from acformer_jax.inference import loading
  loaded = loading.load_for_inference(out, require_tokenizer=False)
  assert float(loaded.params["llm"]["norm"]["scale"][0]) == 1.0


def test_trainer_workdir_and_evaluate_output(readonly, tmp_path):
  from acformer_jax.trainer import loop
  from tests.trainer import tiny
  config = tiny.experiment_config(tmp_path / "no-data", tmp_path / "no-tok", steps=2)
  with pytest.raises(outputs.OutputNotWritable, match="workdir"):
    loop.run(config, readonly / "run")
  q = tmp_path / "q.jsonl"
  q.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "category": "x"}\n')
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "-m", "acformer_jax.evaluate", "run", "--benchmark", "pope", "--questions",
       str(q), "--checkpoint", str(tmp_path / "no-such-checkpoint"), "--output",
       str(readonly / "answers.jsonl")], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"error: --output {readonly / 'answers.jsonl'} cannot be written" in proc.stderr
  assert "Traceback" not in proc.stderr

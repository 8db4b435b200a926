"""A 2-process x 4-device CPU training run that is SIGKILLed and resumed equals a 1-process x 8-device run.

Spec: ``docs/jax_practices.md`` items 2, 5, 6 and 14 (multi-controller runs: per-host data shards,
``make_array_from_process_local_data``, Orbax from every process, resume after a kill) and
``docs/environment.md`` section 3 (several CPU processes with gloo). Everything is real: the
``acformer_jax.train`` CLI, ``launch/local_multiprocess.sh``, the tfds demo builder, a
SentencePiece tokenizer trained here, and Orbax checkpoints. The model is the tiny stage-2
config (connector + LLM trained, 512-piece demo tokenizer) on packed 8-row batches: with the
default ``data.packing_groups`` (8 packers of one row each; each host packs the groups it owns)
2 hosts x 4 rows form the same global batches as 1 host x 8 rows (docs/data.md 5.1).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import cpu_compile

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 4, 2
CACHE = ROOT / ".cache" / "jax_tests"
# Test-only: cheap XLA:CPU code generation (tests/cpu_compile.py) for every run; all runs use the
# same flags, so their numerics stay comparable. (conftest's forced 8 devices are dropped: the
# launcher sets the device count per process.)
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
           XLA_FLAGS=cpu_compile.with_flags())
def _train_args(workdir, tfds_dir, tok_dir, delay=0.0, cache=True):
  # No persistent compile cache for multi-process CPU runs: JAX keys CPU executables per
  # process and only process 0 writes entries, so on a re-run process 0 loads the step while
  # process 1 compiles it, and process 0's first collective times out (gloo: 30 s).
  return ["--config", str(ROOT / "configs" / "tiny_acformer_stage2.py"), "--workdir", str(workdir),
          "--config.data.builder=acformer_demo/qa_tiny", f"--config.data.data_dir={tfds_dir}",
          f"--config.data.tokenizer_path={tok_dir}", "--config.data.packing=True",
          "--config.data.max_length=256", "--config.data.max_images_per_row=2",
          "--config.data.packing_lookahead=32",
          "--config.data.num_workers=1", "--config.init.allow_random=True",
          "--config.train.global_batch_size=8", f"--config.train.steps={STEPS}",
          "--config.train.log_every=1", "--config.train.progress_bar=False",
          f"--config.train.debug_step_delay_s={delay}", f"--config.checkpoint.every={EVERY}",
          "--config.checkpoint.keep=5", "--config.checkpoint.export=False",
          "--config.eval.num_questions=16", "--config.eval.batch_size=8",
          f"--compile_cache={CACHE if cache else ''}"]


def _local(n, k, args, log_dir, **kw):
  cmd = ["bash", str(ROOT / "launch" / "local_multiprocess.sh"), str(n), "--devices-per-process", str(k),
         "--python", sys.executable, "--log-dir", str(log_dir), "--init-timeout", "120", "--", *args]
  return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True, **kw)


def _finish(p, timeout, what):
  try:
    out, _ = p.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    out, _ = p.communicate()
    pytest.fail(f"{what} did not finish within {timeout} s:\n{out[-4000:]}")
  assert p.returncode == 0, f"{what} failed with status {p.returncode}:\n{out[-4000:]}"
  return out


def _losses(workdir) -> dict:
  """step -> list of logged losses (a step re-run after the resume appears twice)."""
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    if "train/loss" in rec:  # (eval/* records have no loss)
      out.setdefault(rec["step"], []).append(rec["train/loss"])
  return out


def _read_state(step_dir) -> dict:
  """A checkpoint's TrainState as host numpy arrays (flat path -> array)."""
  import jax
  import orbax.checkpoint as ocp
  path = pathlib.Path(step_dir) / "state"
  meta = ocp.StandardCheckpointer().metadata(path).item_metadata
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
  state = ocp.StandardCheckpointer().restore(path, target)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def _wait_past_checkpoint(run, proc, timeout=600):
  """Returns once checkpoint EVERY is committed and a later step has been logged."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    jsonl = run / "metrics.jsonl"
    if (run / "checkpoints" / str(EVERY) / "state").is_dir() and jsonl.exists() and \
        max(_losses(run), default=0) > EVERY:
      return
    if proc.poll() is not None:
      pytest.fail(f"2-process run ended (status {proc.returncode}) before it could be killed:\n"
                  f"{proc.stdout.read()[-4000:]}")
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGKILL)
  pytest.fail(f"no checkpoint {run / 'checkpoints' / str(EVERY)} and later step within {timeout} s")


@pytest.mark.slow  # about 4 minutes on 2 cores: opt-in (launch/test.sh --slow)
def test_two_processes_killed_and_resumed_match_one_process(tmp_path):
  import tensorflow_datasets as tfds
  import acformer_jax.data.builders  # noqa: F401  (registers acformer_demo)
  from acformer_jax.demo import tokenizer as demo_tokenizer
  tfds_dir, tok = tmp_path / "tfds", demo_tokenizer.build(tmp_path / "tok")
  # Multi-process runs do not build datasets (every host would); prepare it once here.
  tfds.builder("acformer_demo/qa_tiny", data_dir=str(tfds_dir)).download_and_prepare()
  ref, run = tmp_path / "ref", tmp_path / "run"

  # Reference: one process with all 8 devices, uninterrupted.
  _finish(_local(1, 8, _train_args(ref, tfds_dir, tok), tmp_path / "logs_ref"), 900, "1-process run")

  # 2 processes x 4 devices, SIGKILLed (every process) mid-run: after the checkpoint at step
  # EVERY and after step EVERY + 1 was logged, so the resumed run repeats that step.
  p = _local(2, 4, _train_args(run, tfds_dir, tok, delay=3.0, cache=False), tmp_path / "logs_a")
  _wait_past_checkpoint(run, p)
  os.killpg(p.pid, signal.SIGKILL)
  p.wait(timeout=30)
  assert p.returncode == -signal.SIGKILL
  assert not (run / "summary.json").exists(), "the run finished before it could be killed"
  assert max(_losses(run)) < STEPS

  # The same command again resumes from the newest checkpoint and completes.
  out = _finish(_local(2, 4, _train_args(run, tfds_dir, tok, cache=False), tmp_path / "logs_b"), 900, "resumed run")
  assert "resumed from" in out, out[-3000:]
  summary = json.loads((run / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["step"] == STEPS

  # The rows really were packed (more samples than rows).
  data_ref = json.loads((ref / "summary.json").read_text())["data"]
  assert data_ref["samples"] > STEPS * 8, data_ref
  want, got = _losses(ref), _losses(run)
  assert sorted(want) == list(range(1, STEPS + 1)) and sorted(got) == sorted(want)
  assert len(got[EVERY + 1]) == 2, "step EVERY + 1 should be logged before the kill and after the resume"
  for step, values in got.items():
    np.testing.assert_allclose(values, want[step] * len(values), rtol=2e-5, atol=1e-6,
                               err_msg=f"loss at step {step}")

  final_ref, final_run = _read_state(ref / "checkpoints" / str(STEPS)), _read_state(run / "checkpoints" / str(STEPS))
  assert final_ref.keys() == final_run.keys()
  for k in final_ref:
    np.testing.assert_allclose(final_run[k], final_ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
  # The held-out evaluation at the end ran as one SPMD program over both processes' devices
  # and gave the answers of the 1-process run.
  ev_ref, ev_run = json.loads((ref / "summary.json").read_text())["eval"], summary["eval"]
  assert ev_run["step"] == STEPS and ev_run["metrics"]["num_questions"] == 16
  assert ev_run["metrics"] == ev_ref["metrics"]
  texts = lambda ev: [json.loads(l)["text"] for l in pathlib.Path(ev["answers"]).read_text().splitlines()]  # noqa: E731
  assert texts(ev_run) == texts(ev_ref)
  # The comparison is not vacuous: training moved both towers it trains.
  first = _read_state(ref / "checkpoints" / str(EVERY))
  for tower in ("'connector'", "'llm'"):
    moved = [k for k in first if tower in k and "params" in k and not np.allclose(first[k], final_ref[k])]
    assert moved, f"no {tower} parameter changed between step {EVERY} and {STEPS}"

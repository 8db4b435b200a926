"""Held-out evaluation inside the training job (trainer/evaluation.py, issue: the accuracy
the job reports is what ``evaluate run`` + ``evaluate score`` give on its export)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from acformer_jax.evals import io as eio
from acformer_jax.trainer import loop
from tests.trainer import tiny

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_Q = 24


def _config(demo, steps=4, **eval_fields):
  data_dir, tok = demo
  c = tiny.experiment_config(data_dir, tok, steps=steps, every=100)
  c.checkpoint.export = True
  c.eval.update(benchmark="demo", num_questions=NUM_Q, batch_size=8, **eval_fields)
  return c


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-m", "acformer_jax.evaluate", *args], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout


def test_reported_accuracy_is_reproduced_by_evaluate_run_and_score(demo, tmp_path):
  work = tmp_path / "run"
  config = _config(demo, steps=4, every=2)
  summary = loop.run(config, work)
  assert summary["status"] == "completed"
  ev = summary["eval"]
  assert ev["benchmark"] == "demo" and ev["step"] == 4
  reported = ev["metrics"]["accuracy"]
  assert ev["metrics"]["num_questions"] == NUM_Q and ev["metrics"]["num_missing"] == 0
  # Evaluated at step 2 (eval.every) and at the end; logged as eval/* scalars.
  for step in (2, 4):
    saved = json.loads((work / "eval" / "demo" / f"step_{step}" / "metrics.json").read_text())
    assert saved["step"] == step and "accuracy" in saved
  logged = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "eval/accuracy" in r] == [2, 4]
  assert json.loads((work / "summary.json").read_text())["eval"]["metrics"]["accuracy"] == reported
  # Re-running the finished job (e.g. a re-submitted launch script) reports it again.
  again = loop.run(config, work)
  assert again["eval"]["step"] == 4 and again["eval"]["metrics"] == ev["metrics"]

  # The same questions through the CLI on the exported checkpoint (one device, not the
  # training mesh): the same answers, so the same accuracy.
  data = work / "eval_data"
  answers = tmp_path / "answers.jsonl"
  _cli("run", "--checkpoint", str(work / "export"), "--benchmark", "demo", "--questions",
       str(data / "questions.jsonl"), "--images", str(data / "images"), "--output", str(answers),
       "--batch_size", "5", "--noprogress")
  scored = json.loads(_cli("score", "--benchmark", "demo", "--answers", str(answers), "--data",
                           str(data), "--json").strip().splitlines()[-1])
  assert scored["accuracy"] == reported
  ours = [r["text"] for r in eio.read_answers(ev["answers"])]
  theirs = [r["text"] for r in eio.read_answers(answers)]
  assert len(ours) == NUM_Q and ours == theirs


def test_bad_eval_config_fails_before_any_step(demo, tmp_path):
  c = _config(demo)
  c.eval.benchmark = "nope"
  with pytest.raises(eio.EvalDataError, match="unknown benchmark 'nope'"):
    loop.run(c, tmp_path / "a")
  assert not (tmp_path / "a" / "checkpoints").exists() or \
      not any((tmp_path / "a" / "checkpoints").iterdir())
  c = _config(demo)
  c.eval.update(benchmark="pope", questions=str(tmp_path / "missing.jsonl"), data=str(tmp_path))
  with pytest.raises((eio.EvalDataError, FileNotFoundError), match="missing.jsonl"):
    loop.run(c, tmp_path / "b")
  c = _config(demo)
  c.eval.update(benchmark="pope", questions="", data="")
  with pytest.raises(eio.EvalDataError, match="config.eval.questions"):
    loop.run(c, tmp_path / "c")

"""Non-UTF-8 benchmark files (issue #15 item 10): an `error:` naming the file, line and column,
from the readers and from the CLI (no traceback)."""
import os
import pathlib
import subprocess
import sys

import pytest

from acformer_jax.evals import io as eio

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _write(path, text_before, text_after=""):
  path.write_bytes(text_before.encode() + b"caf\xe9" + text_after.encode())
  return path


def test_readers_name_file_line_and_column(tmp_path):
  answers = _write(tmp_path / "answers.jsonl",
                   '{"question_id": 1, "prompt": "p", "text": "yes", "answer_id": "a", '
                   '"model_id": "m", "metadata": {}}\n\n{"question_id": 2, "text": "', '"}\n')
  with pytest.raises(eio.EvalDataError, match=r"answers.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 32\)"):
    eio.read_answers(answers)
  with pytest.raises(eio.EvalDataError, match=r"data.json:2: not valid UTF-8"):
    eio.read_json(_write(tmp_path / "data.json", '[\n"', '"]'))
  with pytest.raises(eio.EvalDataError, match=r"table.tsv:2: not valid UTF-8"):
    eio.read_tsv(_write(tmp_path / "table.tsv", "index\tquestion\n0\t", "\n"))


def test_evaluate_cli_prints_an_error(tmp_path):
  questions = _write(tmp_path / "q.jsonl", '{"question_id": 1, "image": "a.jpg", "text": "', '"}\n')
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "-m", "acformer_jax.evaluate", "run", "--benchmark", "pope", "--questions",
       str(questions), "--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "a.jsonl")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert f"error: {questions}:1: not valid UTF-8 (byte 0xe9 at column" in proc.stderr

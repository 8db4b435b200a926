"""Clear errors for bad generation inputs (issue #15 item 10): a prompt plus max_new_tokens
beyond the model's positions, and a decompression bomb (a 20000x20000 PNG header)."""
import dataclasses
import struct
import zlib

import pytest
from PIL import Image

from acformer_jax import generate
from acformer_jax.inference import engine as E
from acformer_jax.models.mllm import MultimodalLM
from tests.inference import tiny_model as T


def bomb_png(path, width=20000, height=20000):
  """A PNG whose header claims ``width x height`` RGB pixels (the data is a few bytes)."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                   + chunk(b"IEND", b""))
  return path


def test_prompt_plus_new_tokens_beyond_the_positions():
  llm = dataclasses.replace(T.LLM, max_position_embeddings=64)
  eng = E.Engine(MultimodalLM(dataclasses.replace(T.CONFIG, llm=llm)), params=None)
  req = E.Request([1] + [5] * 59)  # 60 tokens, text only
  with pytest.raises(ValueError, match=r"request 0: a prompt of 60 tokens plus max_new_tokens=8 "
                                       r"needs 68 positions, more than the model's 64"):
    eng.generate([req], max_new_tokens=8)


def test_generate_cli_errors(tiny_checkpoint, tmp_path, capsys):
  """``generate.main`` in-process: the same flag parsing and error handling as ``python -m
  acformer_jax.generate`` (its real CLI runs in tests/inference/test_generate_cli.py); an
  uncaught exception (a traceback from the CLI) fails the test here."""
  ckpt = str(tiny_checkpoint[0])
  bomb = bomb_png(tmp_path / "bomb.png")
  with pytest.raises(Image.DecompressionBombError):  # what PIL does on its own
    Image.open(bomb)
  assert generate.main(["--checkpoint", ckpt, "--image", str(bomb), "--prompt", "hi"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err, err[-3000:]
  assert f"error: --image {bomb}: cannot read the image" in err
  assert "decompression bomb" in err
  assert generate.main(["--checkpoint", ckpt, "--prompt", "hi", "--max_new_tokens", "5000"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err, err[-3000:]
  assert "plus max_new_tokens=5000" in err and "the model's 4096" in err
  assert err.startswith("error:") or "\nerror:" in err


def test_evaluation_image_bomb_names_the_question(tmp_path):
  from acformer_jax.evals import io as eio
  from acformer_jax.evals import prompts, runner
  bomb_png(tmp_path / "bomb.png")
  req = prompts.Request(key=7, question_id=7, image="bomb.png", user_message="q", prompt="q",
                        answer_prompt="q", max_new_tokens=8)
  with pytest.raises(eio.EvalDataError, match=r"question 7: cannot read .*bomb.png"):
    runner.load_image(req, tmp_path)

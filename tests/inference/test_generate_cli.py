"""The generate CLI end to end on a tiny random checkpoint: one question, and a two-turn
interactive chat from piped stdin (docs/benchmarks.md 1 prompt protocol)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from acformer_jax import generate
from acformer_jax.inference import loading, pipeline
from tests.inference import tiny_model as T

ROOT = T.__file__.rsplit("/tests/", 1)[0]
Q1, Q2 = "What is in the image?", "Is there a red cat?"
MAX_NEW = 12


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
  path = tmp_path_factory.mktemp("img") / "photo.png"
  rng = np.random.RandomState(5)
  Image.fromarray(rng.randint(0, 256, (30, 50, 3), dtype=np.uint8)).save(path)
  gen = pipeline.Generator(loading.load_for_inference(tiny_checkpoint[0]))
  img = Image.open(path).convert("RGB")
  ask = lambda history, q: gen.generate(  # noqa: E731
      [(img, pipeline.conversation_prompt(history, q, has_image=True))],
      max_new_tokens=MAX_NEW)[0]
  a1 = ask([], Q1)
  a2 = ask([(Q1, a1)], Q2)
  a2_alone = ask([], Q2)
  assert a1 and a2 and a2 != a2_alone  # the history changes the second answer
  return tiny_checkpoint[0], path, a1, a2


def test_single_question(setup, capsys):
  ckpt, image, a1, _ = setup
  rc = generate.main(["--checkpoint", str(ckpt), "--image", str(image), "--prompt", Q1,
                      "--max_new_tokens", str(MAX_NEW)])
  assert rc == 0
  assert capsys.readouterr().out == a1 + "\n"


def test_interactive_two_turns_from_piped_stdin(setup):
  ckpt, image, a1, a2 = setup
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest",
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".cache", "jax_tests"))
  proc = subprocess.run(
      [sys.executable, "-m", "acformer_jax.generate", "--checkpoint", str(ckpt), "--image",
       str(image), "--interactive", "--max_new_tokens", str(MAX_NEW)],
      input=f"{Q1}\n{Q2}\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines() == [f"ASSISTANT: {a1}", f"ASSISTANT: {a2}"], proc.stdout


def test_bad_arguments(setup, tmp_path, capsys):
  ckpt, image, _, _ = setup
  assert generate.main(["--checkpoint", str(ckpt), "--image", str(tmp_path / "x.png"),
                        "--prompt", "hi"]) == 2
  err = capsys.readouterr().err
  assert "--image" in err and "no such file" in err, err
  assert generate.main(["--checkpoint", str(tmp_path), "--prompt", "hi"]) == 2
  assert "model_config.json not found" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    generate.main(["--checkpoint", str(ckpt)])  # neither --prompt nor --interactive

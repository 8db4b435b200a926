"""Build an offline tokenizer directory from a llama.cpp vocab-only GGUF file.

Used by ``launch/setup.sh`` to give the tests real vocabularies (Llama-3, Qwen2) without
network access: the llama-cpp-python sdist ships ``ggml-vocab-<name>.gguf`` with
llama.cpp's reference tokenisation vectors (``.gguf.inp`` / ``.gguf.out``). transformers
converts the GGUF (needs the ``gguf`` package; minutes per vocabulary, hence once at
set-up) and the result is saved as ``tokenizer.json`` with the vectors next to it
(``vectors.inp`` / ``vectors.out``, read by ``tests/data/test_chat_templates.py``).

  python -m acformer_jax.data.gguf_vocab --gguf models/ggml-vocab-qwen2.gguf --out .assets/vocab/qwen2
"""
from __future__ import annotations

import pathlib
import shutil
import sys


def build(gguf: pathlib.Path, out: pathlib.Path) -> int:
  """Converts ``gguf`` into ``out``; returns how many reference vectors it reproduces."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  gguf = pathlib.Path(gguf)
  if not gguf.is_file():
    raise FileNotFoundError(f"{gguf} not found (a llama.cpp ggml-vocab-*.gguf file)")
  tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
  tmp = pathlib.Path(str(out) + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tok.save_pretrained(tmp)
  same = 0
  for suffix in ("inp", "out"):
    src = gguf.with_name(f"{gguf.name}.{suffix}")
    if not src.is_file():
      raise FileNotFoundError(f"{src} not found (llama.cpp's reference vectors)")
    shutil.copy(src, tmp / f"vectors.{suffix}")
  texts = (tmp / "vectors.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
  outs = (tmp / "vectors.out").read_text(encoding="utf-8").split("\n")
  for text, ids in zip(texts, outs):
    same += tok(text, add_special_tokens=False).input_ids == [int(x) for x in ids.split()]
  shutil.rmtree(out, ignore_errors=True)
  tmp.rename(out)
  return same


def main(argv) -> int:
  """absl entry point (flags defined only when run as a program: importers get none)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  out = pathlib.Path(flags.FLAGS.out)
  same = build(pathlib.Path(flags.FLAGS.gguf), out)
  print(f"{out}: tokenizer.json written; {same} reference vectors reproduced")
  return 0


if __name__ == "__main__":
  from acformer_jax import cli  # pylint: disable=ungrouped-imports
  cli.define("string", "gguf", None, "A llama.cpp ggml-vocab-*.gguf file (its .inp/.out "
             "reference vectors beside it).", required=True)
  cli.define("string", "out", None, "Output tokenizer directory.", required=True)
  cli.run(lambda argv: sys.exit(main(argv)))

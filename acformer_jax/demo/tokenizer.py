"""A small SentencePiece tokenizer for the tiny demo configs, trained offline on demo text.

The tiny demo LLM has 128 hidden units; with LLaMA's 32000-token vocabulary its LM head would
cost ~10x the rest of the model per token (``trainer/flops.py``), which does not fit the demo's
CPU budget. This builds a 512-piece BPE model with LLaMA's conventions (``<unk>``/``<s>``/``</s>``
= 0/1/2, byte fallback so any text encodes, SentencePiece whitespace handling) from the demo's
captions, questions, answers and the ``plain`` / ``vicuna_v1`` template text
(``docs/method.md`` 2.3-2.4), so the data pipeline and the inference CLIs use it exactly like the
LLaMA tokenizer (same files, same loader). Deterministic: same corpus, one training thread.

  python -m acformer_jax.demo.tokenizer --out .assets/demo_tokenizer
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import sys
from typing import List, Optional, Sequence

DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[2] / ".assets" / "demo_tokenizer"
VOCAB_SIZE = 512


def demo_corpus(num_per_task: int = 1500, seed: int = 0) -> List[str]:
  """Template text plus the conversations of ``num_per_task`` caption and QA samples."""
  from acformer_jax.data import templates  # pylint: disable=import-outside-toplevel
  from acformer_jax.demo import scenes as demo  # pylint: disable=import-outside-toplevel
  lines = [templates.VICUNA_SYSTEM, templates.SHORT_ANSWER_SUFFIX, "USER: ASSISTANT:",
           *demo.CAPTION_PROMPTS, " ".join(demo.COUNTS), " ".join(demo.ANSWERS["existence"])]
  for task in ("caption", "qa"):
    for s in demo.generate(task, "train", num_per_task, image_size=56, seed=seed, with_images=False):
      lines += [t["value"].replace(templates.IMAGE_TOKEN, "").strip() for t in s["conversations"]]
  return [l for l in lines if l]


def build(out: Optional[pathlib.Path] = None, *, vocab_size: int = VOCAB_SIZE,
          force: bool = False) -> pathlib.Path:
  """Writes ``tokenizer.model`` + ``tokenizer_config.json`` into ``out`` (idempotent)."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  from acformer_jax.data.offline_tokenizer import TOKENIZER_CONFIG  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(out or DEFAULT_DIR)
  model, cfg = out / "tokenizer.model", out / "tokenizer_config.json"
  if model.is_file() and cfg.is_file() and not force:
    return out
  out.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(demo_corpus()), model_writer=buf, vocab_size=vocab_size,
      model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      split_digits=True, allow_whitespace_only_pieces=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, character_coverage=1.0, num_threads=1, minloglevel=2)
  # Every process of a multi-process job may build it at once (configs call this): each writes
  # its own temporary files and renames them into place, config first, model last.
  for path, data in ((cfg, (json.dumps(TOKENIZER_CONFIG, indent=2) + "\n").encode()),
                     (model, buf.getvalue())):
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
  return out


def main(argv: Sequence[str]) -> int:
  """absl entry point (flags defined only when run as a program: importers get none)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  print(f"demo tokenizer: {build(pathlib.Path(flags.FLAGS.out), force=flags.FLAGS.force)}")
  return 0


if __name__ == "__main__":
  from acformer_jax import cli
  cli.define("string", "out", str(DEFAULT_DIR), "Output directory.")
  cli.define("bool", "force", False, "Rebuild even if present.")
  cli.run(lambda argv: sys.exit(main(argv)))

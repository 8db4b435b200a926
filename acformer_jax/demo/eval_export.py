"""The demo's held-out ``test`` split as a LLaVA-style question file, and its command line.

  python -m acformer_jax.demo export --out /tmp/demo_eval --image_size 56 --num_test 500
  python -m acformer_jax.demo score --answers answers.jsonl --ground_truth /tmp/demo_eval/ground_truth.jsonl
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Sequence

from acformer_jax.data.templates import SHORT_ANSWER_SUFFIX
from acformer_jax.demo.scenes import ANSWERS, CATEGORIES, generate
from acformer_jax.demo.scoring import score_demo


def export_eval(out_dir, *, image_size: int = 64, num_test: int = 500, seed: int = 0,
                photo_backgrounds: bool = False) -> pathlib.Path:
  """Writes the ``qa`` test split as ``questions.jsonl``, ``ground_truth.jsonl`` and ``images/``.

  Identical to the ``test`` split of the ``acformer_demo`` builder with the same settings.
  """
  out = pathlib.Path(out_dir)
  (out / "images").mkdir(parents=True, exist_ok=True)
  with open(out / "questions.jsonl", "w") as fq, open(out / "ground_truth.jsonl", "w") as fg:
    for qid, s in enumerate(generate("qa", "test", num_test, image_size=image_size, seed=seed,
                                     photo_backgrounds=photo_backgrounds)):
      name = f"{s['id']}.png"
      (out / "images" / name).write_bytes(s["image"])
      m = s["meta"]
      text = f"{m['question']}\n{SHORT_ANSWER_SUFFIX}"
      fq.write(json.dumps({"question_id": qid, "image": name, "text": text, "category": m["category"]}) + "\n")
      fg.write(json.dumps({"question_id": qid, "answer": m["answer"], "category": m["category"]}) + "\n")
  (out / "info.json").write_text(json.dumps(
      {"benchmark": "demo", "image_size": image_size, "num_questions": num_test, "seed": seed,
       "photo_backgrounds": photo_backgrounds, "categories": list(CATEGORIES),
       "answers": {c: list(v) for c, v in ANSWERS.items()}}, indent=2) + "\n")
  return out


def main(argv: Sequence[str]) -> int:
  """``export`` or ``score`` (absl; flags defined only when run as a program)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("export", "score"):
    raise app.UsageError("usage: python -m acformer_jax.demo {export|score} ...")
  need = ("out",) if argv[1] == "export" else ("answers", "ground_truth")
  missing = [f"--{n}" for n in need if not f[n].value]
  if missing:
    raise app.UsageError(f"{argv[1]}: missing required flag(s) {', '.join(missing)}")
  if argv[1] == "export":
    out = export_eval(f.out, image_size=f.image_size, num_test=f.num_test, seed=f.seed,
                      photo_backgrounds=f.photo_backgrounds)
    print(f"wrote {out}")
  else:
    read = lambda p: [json.loads(line) for line in open(p) if line.strip()]  # noqa: E731
    print(json.dumps(score_demo(read(f.answers), read(f.ground_truth)), indent=2))
  return 0


def define_flags() -> None:
  """The flags of :func:`main` (defined only when run as a program)."""
  from acformer_jax import cli  # pylint: disable=import-outside-toplevel
  cli.define("string", "out", None, "export: output folder (questions.jsonl, "
             "ground_truth.jsonl, images/).")
  cli.define("integer", "image_size", 64, "export: image size.")
  cli.define("integer", "num_test", 500, "export: number of questions.")
  cli.define("integer", "seed", 0, "export: seed.")
  cli.define("bool", "photo_backgrounds", False, "export: photo backgrounds.")
  cli.define("string", "answers", None, "score: LLaVA-style answers .jsonl.")
  cli.define("string", "ground_truth", None, "score: ground_truth.jsonl.")

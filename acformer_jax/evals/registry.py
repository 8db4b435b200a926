"""Benchmark registry: question-file format, default file name and scorer (`docs/benchmarks.md` 4).

`get(name)` raises a clear error for an unknown benchmark. `read_questions` validates a
question file (unknown or missing fields, duplicate question keys) for the runner.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Optional

from acformer_jax import demo
from acformer_jax.demo import scoring as demo_scoring

from acformer_jax.evals import base
from acformer_jax.evals import io as eio
from acformer_jax.evals import llava_bench, mmbench, mme, mmvet, pope, prompts, scienceqa, vqa


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark: its question-file format, LLaVA's file name for it, and its scorer."""
  name: str
  question_file: str
  fmt: str  # "jsonl" | "sqa_json" | "mmbench_tsv"
  score: Callable[..., base.ScoreResult]
  # For a generated held-out set: writes questions.jsonl, ground_truth.jsonl and images/ into
  # a folder (``export(out, image_size=, num_test=, seed=)``); the trainer's in-job
  # evaluation calls it when no question file is given.
  export: Optional[Callable[..., object]] = None


BENCHMARKS = {b.name: b for b in (
    Benchmark("pope", pope.QUESTION_FILE, "jsonl", pope.score),
    Benchmark("mme", mme.QUESTION_FILE, "jsonl", mme.score),
    Benchmark("scienceqa", scienceqa.QUESTION_FILE, "sqa_json", scienceqa.score),
    Benchmark("mmbench", mmbench.TSV_NAME, "mmbench_tsv", mmbench.score),
    Benchmark("textvqa", "llava_textvqa_val_v051_ocr.jsonl", "jsonl", vqa.score_textvqa),
    Benchmark("gqa", "llava_gqa_testdev_balanced.jsonl", "jsonl", vqa.score_gqa),
    Benchmark("vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", "jsonl", vqa.score_vqav2),
    Benchmark("vizwiz", "llava_test.jsonl", "jsonl", vqa.score_vizwiz),
    Benchmark("mmvet", mmvet.QUESTION_FILE, "jsonl", mmvet.score),
    Benchmark("llava_bench", llava_bench.QUESTION_FILE, "jsonl", llava_bench.score),
    Benchmark("demo", "questions.jsonl", "jsonl", demo_scoring.score, demo.export_eval),
)}


def get(name: str) -> Benchmark:
  """The benchmark called `name`, or a clear error listing the known ones."""
  if name not in BENCHMARKS:
    raise eio.EvalDataError(f"unknown benchmark {name!r}; expected one of: "
                            f"{', '.join(sorted(BENCHMARKS))}")
  return BENCHMARKS[name]


def read_questions(name: str, path: str | pathlib.Path) -> list[dict]:
  """Reads and validates a question file of benchmark `name` (records in file order)."""
  bench = get(name)
  path = pathlib.Path(path)
  if bench.fmt == "jsonl":
    records = eio.read_jsonl(path)
    where = lambda i: f"{path}: question {i + 1}"  # noqa: E731
  elif bench.fmt == "sqa_json":
    records = eio.read_json(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
      raise eio.EvalDataError(f"{path}: expected a JSON list of problem objects")
    where = lambda i: f"{path}: problem {i}"  # noqa: E731
  else:
    records = eio.read_tsv(path)
    where = lambda i: f"{path}: row {i + 2}"  # noqa: E731
  seen: dict = {}
  for i, rec in enumerate(records):
    prompts.validate_question(name, rec, where(i))
    key = prompts.question_key(name, rec)
    if key in seen:
      raise eio.EvalDataError(f"{where(i)}: duplicate question {key!r} (also at "
                              f"{where(seen[key])})")
    seen[key] = i
  if not records:
    raise eio.EvalDataError(f"{path}: no questions")
  return records

"""Benchmark registry: question-file format, default file name and scorer (`docs/benchmarks.md` 4).

`get(name)` raises a clear error for an unknown benchmark. `read_questions` validates a
question file (unknown or missing fields, duplicate question keys) for the runner.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

from acformer_jax.evals import base
from acformer_jax.evals import io as eio
from acformer_jax.evals import llava_bench, mmbench, mme, mmvet, pope, prompts, scienceqa, vqa


def _score_demo(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """The demo set (acformer_jax.data.demo): exact match per category."""
  del judge, out
  try:
    from acformer_jax.data.demo import score_demo  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise eio.EvalDataError(f"benchmark 'demo' needs acformer_jax.data.demo.score_demo, which "
                            f"is not available ({e})") from None
  qs = eio.read_jsonl(base.question_file(data, questions, "questions.jsonl"))
  gt = eio.read_jsonl(base.find_file(data, ["ground_truth.jsonl"], "demo ground truth"))
  recs = eio.read_answers(answers)
  eio.index_answers(recs, [q["question_id"] for q in qs], lambda r: r["question_id"], answers)
  res = score_demo(recs, gt)
  metrics = {"accuracy": res["overall"], "prior_baseline": res["prior_baseline"],
             "num_questions": res["num_questions"], "num_missing": res["num_missing"]}
  metrics.update({f"category_{c}": v for c, v in res["per_category"].items()})
  lines = [f"demo accuracy: {res['overall']:.2f} ({res['num_questions']} questions); "
           f"best answer-prior baseline: {res['prior_baseline']:.2f}"]
  lines += [f"  {c:<10} {v:.2f}" for c, v in res["per_category"].items()]
  return base.ScoreResult(metrics, lines)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark: its question-file format, LLaVA's file name for it, and its scorer."""
  name: str
  question_file: str
  fmt: str  # "jsonl" | "sqa_json" | "mmbench_tsv"
  score: Callable[..., base.ScoreResult]


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
    Benchmark("demo", "questions.jsonl", "jsonl", _score_demo),
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

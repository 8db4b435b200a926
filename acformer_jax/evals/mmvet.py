"""MM-Vet: the judge input file and the aggregation of GPT-4 grade files (`docs/benchmarks.md` 3, MM-Vet).

Judge input: LLaVA's `convert_mmvet_for_eval.py` format, a JSON object {"v1_<question_id>":
answer} (indent 2), which the official `mm-vet_evaluator.py` grades. Aggregation follows that
evaluator: per run, total = sum of the 0..1 scores / number of MM-Vet samples x 100; the
reported total is the mean over runs, with the population std and the per-run totals
(rounded to 1 decimal). Per-capability scores need `mm-vet.json` (capability tags) in the
data directory.
"""
from __future__ import annotations

import pathlib

import numpy as np

from acformer_jax.evals import base
from acformer_jax.evals import io as eio

QUESTION_FILE = "llava-mm-vet.jsonl"
DECIMALS = 1


def judge_input(answers: list[dict]) -> dict[str, str]:
  """{"v1_<question_id>": text} in answer order."""
  return {f"v1_{a['question_id']}": a["text"] for a in answers}


def read_grades(path, ids: list[str]) -> np.ndarray:
  """[len(ids), runs] scores from an evaluator grade file; checks ids and run counts."""
  grades = eio.read_json(path)
  if not isinstance(grades, dict):
    raise eio.EvalDataError(f"{path}: expected an object keyed by v1_<id>")
  runs = None
  table = []
  for k in ids:
    entry = grades.get(k)
    if not isinstance(entry, dict) or not isinstance(entry.get("score"), list):
      raise eio.EvalDataError(f"{path}: no grade (with a 'score' list) for {k!r}")
    scores = entry["score"]
    runs = len(scores) if runs is None else runs
    if len(scores) != runs or not runs:
      raise eio.EvalDataError(f"{path}: {k!r} has {len(scores)} scores, expected {runs}")
    for s in scores:
      if not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
        raise eio.EvalDataError(f"{path}: {k!r}: score {s!r} outside [0, 1]")
    table.append(scores)
  extra = sorted(set(grades) - set(ids))
  if extra:
    raise eio.EvalDataError(f"{path}: grades for unknown samples, first: {extra[0]!r}")
  return np.asarray(table, dtype=np.float64)


def score(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """Writes the judge input; aggregates a grade file given in `judge`."""
  qpath = base.question_file(data, questions, QUESTION_FILE)
  qs = eio.read_jsonl(qpath)
  recs = eio.read_answers(answers)
  eio.index_answers(recs, [q["question_id"] for q in qs], lambda r: r["question_id"], answers)
  dst = base.out_path(out, answers, "_mmvet.json")
  eio.write_json(dst, judge_input(recs), indent=2)
  files = {"judge_input": str(dst)}
  lines = [f"MM-Vet: wrote the judge input {dst} ({len(recs)} answers) for the official "
           "mm-vet_evaluator.py"]
  metrics: dict = {"samples": len(recs)}
  if not judge:
    return base.ScoreResult(metrics, lines + ["  no --judge grade file given: no score"], files)
  if len(judge) != 1:
    raise eio.EvalDataError(f"MM-Vet takes one grade file, got {len(judge)}")
  ids = [f"v1_{q['question_id']}" for q in qs]
  scores = read_grades(judge[0], ids)
  per_run = scores.sum(axis=0) / len(ids) * 100.0
  metrics.update(total=float(per_run.mean()), std=float(per_run.std()),
                 runs=[float(x) for x in per_run], num_runs=int(scores.shape[1]))
  meta_path = eio.locate(pathlib.Path(data) / "mm-vet.json")
  if meta_path is not None:
    meta = eio.read_json(meta_path)
    caps: dict[str, list[int]] = {}
    for i, k in enumerate(ids):
      if k not in meta or "capability" not in meta[k]:
        raise eio.EvalDataError(f"{meta_path}: no capability tags for {k!r}")
      for c in set(meta[k]["capability"]):
        caps.setdefault(c, []).append(i)
    for c, rows in sorted(caps.items()):
      metrics[f"cap_{c}"] = float((scores[rows].sum(axis=0) / len(rows) * 100.0).mean())
  runs_txt = ", ".join(f"{x:.{DECIMALS}f}" for x in per_run)
  lines.append(f"MM-Vet total: {metrics['total']:.{DECIMALS}f} (runs [{runs_txt}], "
               f"std {metrics['std']:.{DECIMALS}f}; judge {judge[0]})")
  return base.ScoreResult(metrics, lines, files)

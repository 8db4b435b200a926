"""MME scorer: LLaVA's conversion plus MME's `calculation.py` rules (`docs/benchmarks.md` 3, MME).

Each answer's original MME question is restored from its prompt and looked up in the
ground truth (MME's `eval_tool/Your_Results/<subtask>.txt` lines "image<TAB>question<TAB>
Yes|No", or the per-image .txt files of `MME_Benchmark_release_version`). Within a
subtask, answers are taken two by two in question order (one image); subtask score =
100 * acc + 100 * acc+, perception = sum of 10 subtasks, cognition = sum of 4.
"""
from __future__ import annotations

import os
import pathlib

from acformer_jax.evals import base
from acformer_jax.evals import io as eio
from acformer_jax.evals.prompts import SHORT_ANSWER

QUESTION_FILE = "llava_mme.jsonl"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")
_YES_NO = " Please answer yes or no."


def parse_prediction(text: str) -> str:
  """MME's parse: exact yes/no, else look for yes / no in the first 4 characters."""
  t = text.lower()
  if t in ("yes", "no"):
    return t
  if "yes" in t[:4]:
    return "yes"
  if "no" in t[:4]:
    return "no"
  return "other"


def load_ground_truth(data: str | os.PathLike) -> dict[tuple[str, str, str], str]:
  """(subtask, image stem, question) -> "yes"/"no" from either MME layout."""
  data = pathlib.Path(data)
  gt: dict[tuple[str, str, str], str] = {}
  results = data / "eval_tool" / "Your_Results"
  release = data / "MME_Benchmark_release_version"
  if results.is_dir():
    for path in eio.find_files(results, "*.txt"):
      for lineno, line in enumerate(eio.read_text(path).splitlines(), 1):
        if not line.strip():
          continue
        parts = line.split("\t")
        if len(parts) < 3:
          raise eio.EvalDataError(f"{path}:{lineno}: expected image<TAB>question<TAB>answer")
        gt[(eio.logical(path).stem, pathlib.PurePath(parts[0]).stem, parts[1])] = _gt_label(
            parts[2], path, lineno)
  elif release.is_dir():
    for cat_dir in sorted(p for p in release.iterdir() if p.is_dir()):
      qa_dir = cat_dir / "questions_answers_YN"
      qa_dir = qa_dir if qa_dir.is_dir() else cat_dir
      for path in eio.find_files(qa_dir, "*.txt"):
        for lineno, line in enumerate(eio.read_text(path).splitlines(), 1):
          if not line.strip():
            continue
          parts = line.strip().split("\t")
          if len(parts) != 2:
            raise eio.EvalDataError(f"{path}:{lineno}: expected question<TAB>answer")
          key = (cat_dir.name, eio.logical(path).stem, parts[0])
          gt[key] = _gt_label(parts[1], path, lineno)
  else:
    raise eio.EvalDataError(f"MME ground truth not found: expected {results} or {release}")
  return gt


def _gt_label(value: str, path, lineno) -> str:
  label = value.strip().lower()
  if label not in ("yes", "no"):
    raise eio.EvalDataError(f"{path}:{lineno}: ground truth must be Yes or No, got {value!r}")
  return label


def original_question(prompt: str) -> tuple[str, str]:
  """The MME question restored from LLaVA's prompt, with the double-space variant."""
  q = prompt
  if SHORT_ANSWER in q:
    q = q.replace(SHORT_ANSWER, "").strip()
  if _YES_NO.strip() in q:
    return q, q
  return q + _YES_NO, q + " " + _YES_NO


def score(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """Scores an MME answer file; see the module docstring."""
  del judge, out
  qpath = base.question_file(data, questions, QUESTION_FILE)
  qs = eio.read_jsonl(qpath)
  recs = eio.read_answers(answers)
  by_key = eio.index_answers(recs, [(q["question_id"], q["text"]) for q in qs],
                             lambda r: (r["question_id"], r.get("prompt")), answers)
  gt = load_ground_truth(data)
  per_task: dict[str, list[tuple[str, str, str]]] = {}
  for q in qs:
    rec = by_key[(q["question_id"], q["text"])]
    task = str(q["question_id"]).split("/")[0]
    stem = pathlib.PurePath(str(q["question_id"])).stem
    first, second = original_question(rec["prompt"])
    label = gt.get((task, stem, first), gt.get((task, stem, second)))
    if label is None:
      raise eio.EvalDataError(f"MME ground truth has no line for {task}/{stem}: {first!r}")
    per_task.setdefault(task, []).append((q["question_id"], label,
                                          parse_prediction(rec["text"])))
  metrics: dict[str, float] = {}
  for task, items in per_task.items():
    if task not in PERCEPTION + COGNITION:
      raise eio.EvalDataError(f"{qpath}: unknown MME subtask {task!r}")
    if len(items) % 2:
      raise eio.EvalDataError(f"{qpath}: subtask {task!r} has an odd number of questions")
    correct = sum(label == pred for _, label, pred in items)
    pairs = [items[i:i + 2] for i in range(0, len(items), 2)]
    for a, b in pairs:
      if a[0] != b[0]:
        raise eio.EvalDataError(f"{qpath}: MME questions must come in adjacent pairs per "
                                f"image; got {a[0]!r} followed by {b[0]!r}")
    both = sum(all(label == pred for _, label, pred in p) for p in pairs)
    metrics[task] = base.pct(correct, len(items)) + base.pct(both, len(pairs))
  metrics["perception"] = sum(metrics.get(t, 0.0) for t in PERCEPTION)
  metrics["cognition"] = sum(metrics.get(t, 0.0) for t in COGNITION)
  lines = [f"MME perception: {metrics['perception']:.1f}  ({metrics['perception']:.3f})",
           f"MME cognition: {metrics['cognition']:.2f}"]
  lines += [f"  {t:<22} {metrics[t]:.2f}" for t in PERCEPTION + COGNITION if t in metrics]
  return base.ScoreResult(metrics, lines)

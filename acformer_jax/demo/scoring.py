"""Scoring of the demo's held-out questions: exact match per category, and the answer prior."""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping

import numpy as np


_NUMBERS = {"zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalize_answer(text: str) -> str:
  """Lower case, first line only, hyphens to spaces, no punctuation/articles, number words to digits."""
  text = (text or "").strip().split("\n")[0].lower().replace("-", " ")
  text = re.sub(r"[.,!?;:\"']", " ", text)
  words = [_NUMBERS.get(w, w) for w in text.split() if w not in ("a", "an", "the")]
  return " ".join(words)


def score_demo(answers: Iterable[Mapping], ground_truth: Iterable[Mapping]) -> Dict:
  """Exact match after :func:`normalize_answer`, per category and overall (in percent).

  Args:
    answers: records with ``question_id`` and ``text`` (LLaVA answer-file lines).
    ground_truth: records with ``question_id``, ``answer`` and ``category``.

  Returns:
    ``{"overall": %, "per_category": {cat: %}, "num_questions": n, "num_missing": m,
    "prior_baseline": %}``; a question without an answer counts as wrong.
    ``prior_per_category``: the same per category.
    ``prior_baseline`` is the best answer-prior score: every question answered with the most
    frequent ground-truth answer of its category (a text-only model cannot do better on
    this balanced set).
  """
  predicted = {str(a["question_id"]): a.get("text", "") for a in answers}
  hits: Dict[str, List[int]] = {}
  gold: Dict[str, List[str]] = {}
  missing = 0
  for gt in ground_truth:
    qid = str(gt["question_id"])
    missing += qid not in predicted
    ok = normalize_answer(predicted.get(qid, "")) == normalize_answer(gt["answer"])
    hits.setdefault(gt["category"], []).append(int(ok))
    gold.setdefault(gt["category"], []).append(normalize_answer(gt["answer"]))
  total = [h for v in hits.values() for h in v]
  if not total:
    raise ValueError("score_demo: the ground truth is empty")
  return {"overall": 100.0 * float(np.mean(total)),
          "per_category": {c: 100.0 * float(np.mean(v)) for c, v in sorted(hits.items())},
          "num_questions": len(total), "num_missing": missing,
          "prior_baseline": 100.0 * sum(max(v.count(a) for a in set(v)) for v in gold.values())
                            / len(total),
          "prior_per_category": {c: 100.0 * max(v.count(a) for a in set(v)) / len(v)
                                 for c, v in sorted(gold.items())}}


def score(answers, data, *, questions=None, judge=(), out=None) -> "base.ScoreResult":
  """The ``demo`` benchmark's scorer (``evals/registry.py``): exact match per category."""
  del judge, out
  from acformer_jax.evals import base, io as eio  # pylint: disable=import-outside-toplevel
  qs = eio.read_jsonl(base.question_file(data, questions, "questions.jsonl"))
  gt = eio.read_jsonl(base.find_file(data, ["ground_truth.jsonl"], "demo ground truth"))
  recs = eio.read_answers(answers)
  eio.index_answers(recs, [q["question_id"] for q in qs], lambda r: r["question_id"], answers)
  res = score_demo(recs, gt)
  metrics = {"accuracy": res["overall"], "prior_baseline": res["prior_baseline"],
             "num_questions": res["num_questions"], "num_missing": res["num_missing"]}
  metrics.update({f"category_{c}": v for c, v in res["per_category"].items()})
  metrics.update({f"prior_{c}": v for c, v in res["prior_per_category"].items()})
  lines = [f"demo accuracy: {res['overall']:.2f} ({res['num_questions']} questions); "
           f"best answer-prior baseline: {res['prior_baseline']:.2f}"]
  lines += [f"  {c:<10} {v:.2f}  (answer prior {res['prior_per_category'][c]:.2f})"
            for c, v in res["per_category"].items()]
  return base.ScoreResult(metrics, lines)

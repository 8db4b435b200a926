"""ScienceQA scorer, LLaVA-1.5's `eval_science_qa.py` rules (`docs/benchmarks.md` 3, ScienceQA-IMG).

Gold letters come from the `gpt` turn of LLaVA's `llava_test_CQM-A.json` (its conversion of
`problems.json`) and the number of choices from the "\\nA. ", "\\nB. ", ... markers of the
question (option texts may span several lines). The IMG subset is the problems whose answer
`prompt` contains `<image>`, as in LLaVA.
"""
from __future__ import annotations

import pathlib
import re

from acformer_jax.evals import base
from acformer_jax.evals import io as eio
from acformer_jax.evals.prompts import validate_question

QUESTION_FILE = "llava_test_CQM-A.json"
OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_letter(text: str) -> str:
  """LLaVA's letter extraction: a bare letter, "X. ..." or one "The answer is X." match."""
  if text in OPTIONS:
    return text
  if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
    return text[0]
  found = _ANSWER_IS.findall(text)
  return found[0] if len(found) == 1 else "FAILED"


def num_choices(question: str) -> int:
  """Number of options, counted from the "\\nX. " markers."""
  return sum(f"\n{letter}. " in question for letter in OPTIONS)


def read_problems(path) -> list[dict]:
  """LLaVA's ScienceQA question file -> [{id, has_image, gold, n_choices}]."""
  data = eio.read_json(path)
  if not isinstance(data, list):
    raise eio.EvalDataError(f"{path}: expected a JSON list of problems")
  problems = []
  for i, rec in enumerate(data):
    where = f"{path}: problem {i} (id {rec.get('id')!r})" if isinstance(rec, dict) else \
        f"{path}: problem {i}"
    if not isinstance(rec, dict):
      raise eio.EvalDataError(f"{where}: expected an object")
    validate_question("scienceqa", rec, where)
    conv = rec["conversations"]
    gold = conv[1].get("value") if len(conv) > 1 and isinstance(conv[1], dict) else None
    if gold not in OPTIONS:
      raise eio.EvalDataError(f"{where}: the gpt turn must be the gold letter A-E, "
                              f"got {gold!r}")
    n = num_choices(conv[0]["value"])
    problems.append({"id": rec["id"], "has_image": "image" in rec, "gold": gold,
                     "n_choices": n})
  return problems


def read_predictions(path) -> list[dict]:
  """A LLaVA answer file, or LLaVA's evaluation output (`*_output.jsonl`: one JSON object
  with 'correct'/'incorrect' lists whose items hold question_id, question and pred)."""
  path = pathlib.Path(path)
  try:
    obj = eio.read_json(path)
  except eio.EvalDataError:
    obj = None
  if isinstance(obj, dict) and "correct" in obj and "incorrect" in obj:
    recs = []
    for item in obj["correct"] + obj["incorrect"]:
      try:
        recs.append({"question_id": item["question_id"], "prompt": item["question"],
                     "text": item["pred"]})
      except KeyError as e:
        raise eio.EvalDataError(f"{path}: output item lacks {e}") from None
    return recs
  return eio.read_answers(path)


def score(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """Scores ScienceQA test answers; see the module docstring."""
  del judge, out
  qpath = base.question_file(data, questions, QUESTION_FILE)
  problems = read_problems(qpath)
  split_path = eio.locate(pathlib.Path(data) / "pid_splits.json")
  if split_path is not None:
    test_ids = eio.read_json(split_path).get("test", [])
    if set(test_ids) != {p["id"] for p in problems}:
      raise eio.EvalDataError(f"{qpath}: problem ids differ from the 'test' list of "
                              f"{split_path}")
  recs = read_predictions(answers)
  try:
    by_id = eio.index_answers(recs, [p["id"] for p in problems],
                              lambda r: r["question_id"], answers, "problem")
  except eio.EvalDataError as e:
    sibling = eio.locate(eio.logical(answers).with_name(eio.logical(answers).stem +
                                                        "_output.jsonl"))
    hint = (f" (LLaVA's evaluation output {sibling} holds all predictions; pass it as "
            "--answers)") if sibling is not None else ""
    raise eio.EvalDataError(f"{e}{hint}") from None
  correct = img_correct = img_total = 0
  for p in problems:
    rec = by_id[p["id"]]
    letter = parse_letter(rec["text"])
    ok = letter in OPTIONS[:p["n_choices"]] and letter == p["gold"]
    correct += ok
    if "<image>" in (rec.get("prompt") or ""):
      img_total += 1
      img_correct += ok
  total = len(problems)
  metrics = {"accuracy": base.pct(correct, total), "img_accuracy": base.pct(img_correct, img_total),
             "correct": correct, "total": total, "img_correct": img_correct,
             "img_total": img_total}
  return base.ScoreResult(metrics, [
      f"ScienceQA IMG accuracy: {metrics['img_accuracy']:.1f} ({img_correct}/{img_total})",
      f"ScienceQA accuracy: {metrics['accuracy']:.2f} ({correct}/{total})"])

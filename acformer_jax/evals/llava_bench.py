"""LLaVA-Bench (in-the-wild): judge input and aggregation of GPT-4 reviews (`docs/benchmarks.md` 3, 5).

Judge input: one JSON line per question pairing the GPT-4 reference answer (assistant 1)
with ours (assistant 2) and the image's context captions, in the layout of LLaVA's
`eval_gpt_review_bench.py` ([Context], [Question], the two answers, [System] rule); needs
`questions.jsonl`, `context.jsonl`, `answers_gpt4.jsonl` (and `rule.json` for the assembled
`content`) in the data directory.

Aggregation follows LLaVA's `summarize_gpt_review.py`: per review file and category, the mean
(reference, ours) score pair is rounded to 3 decimals and the relative score
ours / reference x 100 rounded to 1 decimal; the reported number is the mean of these
printed per-run values over the review files (eval_fixtures README, LLaVA-Bench pitfall).
"""
from __future__ import annotations

import pathlib

import numpy as np

from acformer_jax.evals import base
from acformer_jax.evals import io as eio

QUESTION_FILE = "questions.jsonl"


def summarize_reviews(reviews: list[dict], path) -> dict[str, float]:
  """{category or 'all': relative score} for one review file, as LLaVA prints it."""
  scores: dict[str, list] = {}
  for i, rev in enumerate(reviews, 1):
    pair = rev.get("tuple", rev.get("score"))
    if not (isinstance(pair, list) and len(pair) == 2):
      raise eio.EvalDataError(f"{path}: review {i} lacks a 2-element 'tuple' score pair")
    if "category" in rev:
      scores.setdefault(str(rev["category"]).removeprefix("llava_bench_"), []).append(pair)
    scores.setdefault("all", []).append(pair)
  out = {}
  for cat, pairs in sorted(scores.items()):
    ref, ours = (round(float(x), 3) for x in np.asarray(pairs, dtype=np.float64).mean(0))
    out[cat] = round(ours / ref * 100, 1) if ref else 0.0
  return out


def _judge_input(data: pathlib.Path, recs: list[dict]) -> list[dict] | None:
  names = ("questions.jsonl", "context.jsonl", "answers_gpt4.jsonl")
  if not all(eio.locate(data / n) for n in names):
    return None
  qs, ctx, refs = (eio.read_jsonl(data / n) for n in names)
  captions = {c["image"]: "\n".join(c.get("caption", [])) for c in ctx}
  rules = eio.read_json(data / "rule.json") if eio.locate(data / "rule.json") else None
  if not len(qs) == len(refs) == len(recs):
    raise eio.EvalDataError(f"{data}: {len(qs)} questions, {len(refs)} reference answers and "
                            f"{len(recs)} answers must match one to one")
  out = []
  for i, (q, ref, ans) in enumerate(zip(qs, refs, recs), 1):
    if q["image"] not in captions:
      raise eio.EvalDataError(f"{data / 'context.jsonl'}: no context for image {q['image']!r}")
    cat = f"llava_bench_{q.get('category')}"
    item = {"id": i, "question_id": q["question_id"], "category": cat,
            "context": captions[q["image"]], "question": q["text"], "answer1": ref["text"],
            "answer1_id": ref.get("answer_id", ref.get("question_id")), "answer2": ans["text"],
            "answer2_id": ans.get("answer_id")}
    if rules is not None:
      if cat not in rules:
        raise eio.EvalDataError(f"{data / 'rule.json'}: no rule for category {cat!r}")
      role, rule = rules[cat]["role"], rules[cat]["prompt"]
      item["content"] = (f"[Context]\n{item['context']}\n\n[Question]\n{q['text']}\n\n"
                         f"[{role} 1]\n{ref['text']}\n\n[End of {role} 1]\n\n"
                         f"[{role} 2]\n{ans['text']}\n\n[End of {role} 2]\n\n"
                         f"[System]\n{rule}\n\n")
    out.append(item)
  return out


def score(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """Writes the judge input when possible; aggregates review files given in `judge`."""
  data = pathlib.Path(data)
  recs = eio.read_answers(answers)
  qpath = pathlib.Path(questions) if questions else data / QUESTION_FILE
  if questions or eio.locate(qpath):
    qs = eio.read_jsonl(qpath)
    eio.index_answers(recs, [q["question_id"] for q in qs], lambda r: r["question_id"], answers)
  else:
    eio.index_answers(recs, [r["question_id"] for r in recs], lambda r: r["question_id"],
                      answers)
  metrics: dict = {"samples": len(recs)}
  lines, files = [], {}
  items = _judge_input(data, recs)
  if items is not None:
    dst = base.out_path(out, answers, "_judge_input.jsonl")
    eio.write_jsonl(dst, items)
    files["judge_input"] = str(dst)
    lines.append(f"LLaVA-Bench: wrote the judge input {dst} ({len(items)} items)")
  if not judge:
    return base.ScoreResult(metrics, lines + ["LLaVA-Bench: no --judge review files: no score"],
                            files)
  ids = {r["question_id"]: r.get("answer_id") for r in recs}
  per_run = []
  for path in judge:
    reviews = eio.read_jsonl(path)
    seen = [r.get("question_id") for r in reviews]
    if sorted(seen, key=str) != sorted(ids, key=str):
      raise eio.EvalDataError(f"{path}: reviews cover {len(set(seen))} questions, the answer "
                              f"file has {len(ids)}; they must match one to one")
    for r in reviews:
      if "answer2_id" in r and ids[r["question_id"]] not in (None, r["answer2_id"]):
        raise eio.EvalDataError(f"{path}: review of question {r['question_id']!r} graded "
                                f"answer {r['answer2_id']!r}, not {ids[r['question_id']]!r} "
                                f"from {answers}")
    per_run.append(summarize_reviews(reviews, path))
  cats = sorted(set().union(*per_run))
  for cat in cats:
    vals = [run[cat] for run in per_run if cat in run]
    metrics["relative_score" if cat == "all" else f"relative_{cat}"] = float(np.mean(vals))
  metrics["relative_score_runs"] = [run["all"] for run in per_run]
  lines.append(f"LLaVA-Bench relative score: {metrics['relative_score']:.1f} (runs "
               f"{metrics['relative_score_runs']})")
  lines += [f"  {c:<8} {metrics[f'relative_{c}']:.1f}" for c in cats if c != "all"]
  return base.ScoreResult(metrics, lines, files)

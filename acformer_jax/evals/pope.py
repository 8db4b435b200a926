"""POPE scorer, LLaVA's rules (`docs/benchmarks.md` 3, POPE).

Answers become yes/no by LLaVA's rule, are grouped by the question file's category and paired
with the label file of that category line by line (labels from AoiDragon/POPE @e3e39262).
Headline: mean of the three per-split F1 scores, in percent.
"""
from __future__ import annotations

from acformer_jax.evals import base
from acformer_jax.evals import io as eio
from acformer_jax.evals.prompts import SHORT_ANSWER

QUESTION_FILE = "llava_pope_test.jsonl"
SPLITS = ("adversarial", "popular", "random")


def yes_no(text: str) -> str:
  """LLaVA's POPE parse: first sentence, commas removed, "no" iff a No/no/not token."""
  if "." in text:
    text = text.split(".")[0]
  words = text.replace(",", "").split(" ")
  return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def split_metrics(preds: list[str], labels: list[str]) -> dict[str, float]:
  """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio, in percent."""
  tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
  fp = sum(p == "yes" and l != "yes" for p, l in zip(preds, labels))
  tn = sum(p == "no" and l != "yes" for p, l in zip(preds, labels))
  fn = sum(p == "no" and l == "yes" for p, l in zip(preds, labels))
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"accuracy": base.pct(tp + tn, len(preds)), "precision": 100 * precision,
          "recall": 100 * recall, "f1": 100 * f1,
          "yes_ratio": base.pct(preds.count("yes"), len(preds)), "n": len(preds)}


def _label_file(data, split):
  return base.find_file(data, [f"coco/coco_pope_{split}.json", f"coco_pope_{split}.json"],
                        f"POPE label file for split {split!r}")


def score(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """Scores a POPE answer file; see the module docstring."""
  del judge, out
  qpath = base.question_file(data, questions, QUESTION_FILE)
  qs = eio.read_jsonl(qpath)
  recs = eio.read_answers(answers)
  by_id = eio.index_answers(recs, [q["question_id"] for q in qs],
                            lambda r: r["question_id"], answers)
  metrics: dict[str, float] = {}
  lines = []
  splits = sorted({q.get("category") for q in qs}, key=str)
  for split in splits:
    if split not in SPLITS:
      raise eio.EvalDataError(f"{qpath}: unknown POPE category {split!r} "
                              f"(expected one of {', '.join(SPLITS)})")
    sq = [q for q in qs if q["category"] == split]
    lpath = _label_file(data, split)
    labels = eio.read_jsonl(lpath)
    if len(labels) != len(sq):
      raise eio.EvalDataError(
          f"{lpath}: {len(labels)} labels but {len(sq)} {split!r} questions in {qpath}; "
          "use the label files of AoiDragon/POPE commit e3e39262 (docs/benchmarks.md 3, POPE)")
    for i, (q, lab) in enumerate(zip(sq, labels), 1):
      question = q["text"].replace("\n" + SHORT_ANSWER, "")
      if lab.get("image") != q["image"] or lab.get("text") != question:
        raise eio.EvalDataError(
            f"{lpath}: line {i} ({lab.get('image')!r}, {lab.get('text')!r}) does not match "
            f"question_id {q['question_id']!r} ({q['image']!r}, {question!r}); use the label "
            "files of AoiDragon/POPE commit e3e39262 (docs/benchmarks.md 3, POPE)")
      if lab.get("label") not in ("yes", "no"):
        raise eio.EvalDataError(f"{lpath}: line {i}: label must be 'yes' or 'no'")
    preds = [yes_no(by_id[q["question_id"]]["text"]) for q in sq]
    m = split_metrics(preds, [lab["label"] for lab in labels])
    for k, v in m.items():
      metrics[f"{split}_{k}"] = v
    lines.append(f"  {split:<12} acc {m['accuracy']:.2f}  precision {m['precision']:.2f}  "
                 f"recall {m['recall']:.2f}  F1 {m['f1']:.2f}  yes-ratio {m['yes_ratio']:.2f}"
                 f"  (n={m['n']})")
  metrics = {"f1_mean": sum(metrics[f"{s}_f1"] for s in splits) / len(splits), **metrics}
  return base.ScoreResult(metrics, [f"POPE F1 (mean of {len(splits)} splits): "
                                    f"{metrics['f1_mean']:.1f}"] + lines)

"""MMBench dev scorer: judge-free CircularEval (`docs/benchmarks.md` 3, MMBench).

A question (TSV `index` < 1,000,000) counts as correct only if every circular copy
(`index mod 1,000,000` equal) is answered correctly. Each row's choice is extracted without
a judge: (a) exactly one option letter among the answer's tokens (bare, unless the answer
also holds a bare "A" and more than 3 tokens, in which case "A" may be an article), or
wrapped as "A." "(A)" ":A" etc.; (b) else the answer contains exactly one option's text.
Rows that neither rule decides would go to the server's ChatGPT step: here their question
counts as wrong and they are reported in `undecided_rows` / `undecided_questions`.

Ground truth (the `answer` column) comes from the dev TSV when present, else from an upload
sheet (`.xlsx`) that carries it, such as LLaVA's `answers_upload/.../*.xlsx`.
"""
from __future__ import annotations

import pathlib

from acformer_jax.evals import base
from acformer_jax.evals import io as eio
from acformer_jax.evals import prompts
from acformer_jax.evals import xlsx

TSV_NAME = "mmbench_dev_20230712.tsv"
CIRCULAR = 1_000_000
_LETTERS = "ABCDE"
_WRAPS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
          (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))
_UPLOAD_DROP = ("hint", "category", "source", "image", "comment", "l2-category")


def infer_option(answer: str) -> str | None:
  """Rule (a): an option letter among the whitespace tokens of the answer."""
  tokens = [t.strip() for t in answer.split()]
  bare = [c for c in _LETTERS if c in tokens]
  if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
    return bare[0]
  for pre, suf in _WRAPS:
    hits = [c for c in _LETTERS if pre + c + suf in tokens]
    if len(hits) == 1:
      return hits[0]
  return None


def infer_text(answer: str, options: dict[str, str]) -> str | None:
  """Rule (b): the answer contains the text of exactly one option."""
  low = answer.lower()
  hits = [k for k, v in options.items() if str(v).lower() in low]
  return hits[0] if len(hits) == 1 else None


def extract_choice(answer: str, options: dict[str, str]) -> str | None:
  """The chosen letter, or None when only a judge could decide."""
  return infer_option(answer) or infer_text(answer, options)


def _load_sheet(data, questions) -> tuple[list[dict], pathlib.Path, bool]:
  """Rows with an answer column; returns (rows, path, is_tsv)."""
  if questions:
    path = pathlib.Path(questions)
  else:
    data = pathlib.Path(data)
    tsv = eio.locate(data / TSV_NAME)
    tsvs = [tsv] if tsv else eio.find_files(data, "*.tsv")
    sheets = sorted(data.glob("answers_upload/**/*.xlsx")) + sorted(data.glob("*.xlsx"))
    if tsvs:
      path = tsvs[0]
    elif sheets:
      path = sheets[0]
    else:
      raise eio.EvalDataError(f"MMBench ground truth not found in {data}: expected {TSV_NAME} "
                              "or an upload .xlsx with an 'answer' column")
  is_tsv = eio.logical(path).suffix.lower() != ".xlsx"
  rows = eio.read_tsv(path) if is_tsv else xlsx.read_table(path)
  for i, row in enumerate(rows, 2):
    where = f"{path}: row {i}"
    if is_tsv:
      prompts.validate_question("mmbench", row, where)
    for col in ("index", "answer"):
      if eio.is_missing(row.get(col)):
        raise eio.EvalDataError(f"{where}: missing {col!r} (the dev split carries answers)")
    try:
      row["index"] = int(row["index"])
    except (TypeError, ValueError):
      raise eio.EvalDataError(f"{where}: index {row['index']!r} is not an integer") from None
  return rows, path, is_tsv


def score(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """CircularEval accuracy of an MMBench dev answer file; see the module docstring."""
  del judge
  rows, gt_path, is_tsv = _load_sheet(data, questions)
  recs = eio.read_answers(answers)
  by_idx = eio.index_answers(recs, [r["index"] for r in rows],
                             lambda r: prompts.answer_key("mmbench", r), answers, "index")
  groups: dict[int, list[dict]] = {}
  for row in sorted(rows, key=lambda r: r["index"]):
    groups.setdefault(row["index"] % CIRCULAR, []).append(row)
  mains = [i for i in groups if any(r["index"] == i for r in groups[i])]
  hit = undecided_rows = undecided_q = 0
  per_cat: dict[str, list[int]] = {}
  for idx in mains:
    ok, undecided = 1, 0
    for row in groups[idx]:
      options = {c: row[c] for c in prompts.MMBENCH_OPTIONS if not eio.is_missing(row.get(c))}
      choice = extract_choice(str(by_idx[row["index"]]["text"]), options)
      if choice is None:
        undecided += 1
      elif choice != str(row["answer"]).strip():
        ok = 0
        break
    if ok and undecided:
      ok = 0
      undecided_rows += undecided
      undecided_q += 1
    hit += ok
    main = next(r for r in groups[idx] if r["index"] == idx)
    if not eio.is_missing(main.get("category")):
      per_cat.setdefault(str(main["category"]), []).append(ok)
  metrics = {"circular_accuracy": base.pct(hit, len(mains)), "correct": hit,
             "questions": len(mains), "rows": len(rows), "undecided_rows": undecided_rows,
             "undecided_questions": undecided_q}
  for cat, hits in sorted(per_cat.items()):
    metrics[f"category_{cat}"] = base.pct(sum(hits), len(hits))
  lines = [f"MMBench CircularEval accuracy: {metrics['circular_accuracy']:.1f} "
           f"({hit}/{len(mains)} questions, {len(rows)} rows; ground truth {gt_path})",
           f"  rows no rule could decide (would need the ChatGPT step): {undecided_rows}"]
  files = {}
  if is_tsv:
    dst = base.out_path(out, answers, "_mmbench_upload.xlsx")
    write_upload(dst, rows, by_idx)
    files["upload"] = str(dst)
    lines.append(f"  wrote the OpenCompass upload sheet {dst}")
  return base.ScoreResult(metrics, lines, files)


def write_upload(path, rows: list[dict], by_idx: dict) -> None:
  """LLaVA's upload sheet: the TSV minus hint/category/source/image/comment/l2-category,
  with the raw answer text in a `prediction` column inserted at position 6."""
  header = [c for c in rows[0] if c not in _UPLOAD_DROP]
  header.insert(6, "prediction")
  out_rows = []
  for row in rows:
    rec = by_idx.get(row["index"])
    values = []
    for col in header:
      if col == "prediction":
        values.append(rec["text"] if rec else None)
      else:
        v = row.get(col)
        values.append(None if eio.is_missing(v) and col != "index" else v)
    out_rows.append(values)
  xlsx.write_table(path, header, out_rows)

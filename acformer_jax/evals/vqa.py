"""VQA-style benchmarks: the EvalAI answer normaliser, VQA accuracy, TextVQA, GQA and the
VQAv2 / VizWiz upload files (`docs/benchmarks.md` 2 and 3: TextVQA, GQA, VQAv2, VizWiz).
"""
from __future__ import annotations

import re
from typing import Sequence

from acformer_jax.evals import base
from acformer_jax.evals import io as eio

# Contraction repairs applied word by word after lower-casing (`docs/benchmarks.md` 2, step 4). Keys
# with capitals can never match; they are kept so the table equals the reference one.
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't
itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's
shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll
thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've
weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've
whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's
wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've
y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've youll=you'll
youre=you're youve=you've""".split())
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA = re.compile(r"(?<=\d)(,)+(?=\d)")
# A full stop not followed by a digit (the effective reference rule, see docs/benchmarks.md 2).
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_SUBS = 32  # the reference passes re.UNICODE (== 32) as the count


def _strip_punctuation(text: str) -> str:
  drop_all = _DIGIT_COMMA.search(text) is not None
  out = text
  for p in _PUNCTUATION:
    if drop_all or (p + " ") in text or (" " + p) in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=_PERIOD_MAX_SUBS)


def normalize_answer(text: str) -> str:
  """The EvalAI answer processor (`docs/benchmarks.md` 2, steps 1-4)."""
  s = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
  s = s.replace("\n", " ").replace("\t", " ").strip()
  s = _strip_punctuation(s)
  words = [_NUMBERS.get(w, w) for w in s.lower().split()]
  words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
  return " ".join(words)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
  """Leave-one-annotator-out VQA accuracy of one (already normalised) prediction."""
  if not gt_answers:
    raise eio.EvalDataError("VQA accuracy needs at least one ground-truth answer")
  total = 0.0
  for i in range(len(gt_answers)):
    matches = sum(1 for j, a in enumerate(gt_answers) if j != i and a == prediction)
    total += min(1.0, matches / 3.0)
  return total / len(gt_answers)


def textvqa_question(prompt: str) -> str:
  """The TextVQA question recovered from an answer's prompt, lower-cased (eval_textvqa)."""
  lines = prompt.split("\n")
  if prompt.startswith("OCR tokens: "):
    m = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
    if m:
      return m.group(1).lower()
  elif "Reference OCR token: " in prompt and len(lines) == 3:
    return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
  elif len(lines) == 2:
    return lines[0].lower()
  raise eio.EvalDataError(f"cannot recover the TextVQA question from prompt {prompt[:120]!r}")


def score_textvqa(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """TextVQA val accuracy (m4c: prediction and all 10 answers normalised)."""
  del judge, out
  recs = eio.read_answers(answers)
  qpath = base.question_file(data, questions, "llava_textvqa_val_v051_ocr.jsonl")
  qs = eio.read_jsonl(qpath)
  eio.index_answers(recs, [(q["question_id"], q["text"]) for q in qs],
                    lambda r: (r["question_id"], r.get("prompt")), answers)
  metrics = {"samples": len(recs)}
  try:
    gt_path = base.find_file(data, ["TextVQA_0.5.1_val.json"], "TextVQA ground truth")
  except eio.EvalDataError as e:
    return base.ScoreResult(metrics, [f"TextVQA: {len(recs)} answers; no accuracy ({e})"])
  gt = eio.read_json(gt_path)
  table = {}
  for i, a in enumerate(gt.get("data", []) if isinstance(gt, dict) else []):
    try:
      table[(a["image_id"], a["question"].lower())] = a["answers"]
    except (KeyError, AttributeError):
      raise eio.EvalDataError(f"{gt_path}: data[{i}] lacks image_id/question/answers") from None
  total = 0.0
  for r in recs:
    key = (r["question_id"], textvqa_question(r["prompt"]))
    if key not in table:
      raise eio.EvalDataError(f"{gt_path}: no annotation for image {key[0]!r}, "
                              f"question {key[1]!r}")
    gts = [normalize_answer(a) for a in table[key]]
    total += vqa_accuracy(normalize_answer(r["text"]), gts)
  metrics["accuracy"] = base.pct(total, len(recs))
  return base.ScoreResult(metrics, [f"TextVQA accuracy: {metrics['accuracy']:.2f} "
                                    f"({len(recs)} questions)"])


def gqa_prediction(text: str) -> str:
  """LLaVA's GQA conversion: trailing full stops removed, lower-cased."""
  return text.rstrip(".").lower()


def score_gqa(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """GQA testdev-balanced exact-match accuracy; writes the GQA predictions file."""
  del judge
  recs = eio.read_answers(answers)
  qpath = base.question_file(data, questions, "llava_gqa_testdev_balanced.jsonl")
  qs = eio.read_jsonl(qpath)
  by_id = eio.index_answers(recs, [q["question_id"] for q in qs],
                            lambda r: r["question_id"], answers)
  preds = [{"questionId": r["question_id"], "prediction": gqa_prediction(r["text"])}
           for r in recs]
  dst = base.out_path(out, answers, "_gqa_predictions.json")
  eio.write_json(dst, preds)
  metrics = {"samples": len(recs)}
  files = {"predictions": str(dst)}
  try:
    gt_path = base.find_file(data, ["testdev_balanced_questions.json"], "GQA ground truth")
  except eio.EvalDataError as e:
    return base.ScoreResult(metrics, [f"GQA: wrote {dst}; no accuracy ({e})"], files)
  gt = eio.read_json(gt_path)
  if not isinstance(gt, dict):
    raise eio.EvalDataError(f"{gt_path}: expected an object keyed by question id")
  correct = n = 0
  for qid, q in gt.items():
    if not q.get("isBalanced", False):
      continue
    rec = by_id.get(qid, by_id.get(_maybe_int(qid)))
    if rec is None:
      raise eio.EvalDataError(f"{answers}: no answer for balanced GQA question {qid!r}")
    n += 1
    correct += gqa_prediction(rec["text"]) == q["answer"]
  metrics.update(accuracy=base.pct(correct, n), correct=correct, total=n)
  return base.ScoreResult(metrics, [f"GQA accuracy: {metrics['accuracy']:.2f} ({correct}/{n})"],
                          files)


def _maybe_int(s: str):
  return int(s) if s.isdigit() else s


def score_vizwiz(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """VizWiz test upload file: [{image, answer}] in question order, answers normalised."""
  del judge
  recs = eio.read_answers(answers)
  qs = eio.read_jsonl(base.question_file(data, questions, "llava_test.jsonl"))
  by_id = eio.index_answers(recs, [q["question_id"] for q in qs],
                            lambda r: r["question_id"], answers)
  upload = [{"image": q["image"], "answer": normalize_answer(by_id[q["question_id"]]["text"])}
            for q in qs]
  dst = base.out_path(out, answers, "_vizwiz_upload.json")
  eio.write_json(dst, upload)
  return base.ScoreResult({"samples": len(upload)},
                          [f"VizWiz: wrote the EvalAI upload file {dst} ({len(upload)} answers)"],
                          {"upload": str(dst)})


def score_vqav2(answers, data, *, questions=None, judge=(), out=None) -> base.ScoreResult:
  """VQAv2 upload file over all test2015 questions; test-dev must be fully answered."""
  del judge
  recs = eio.read_answers(answers)
  full = eio.read_jsonl(base.find_file(data, ["llava_vqav2_mscoco_test2015.jsonl"],
                                       "VQAv2 test2015 question list"))
  dev = eio.read_jsonl(base.question_file(data, questions,
                                          "llava_vqav2_mscoco_test-dev2015.jsonl"))
  by_id = eio.index_answers(recs, [q["question_id"] for q in dev],
                            lambda r: r["question_id"], answers)
  upload = [{"question_id": q["question_id"],
             "answer": normalize_answer(by_id[q["question_id"]]["text"])
             if q["question_id"] in by_id else ""} for q in full]
  dst = base.out_path(out, answers, "_vqav2_upload.json")
  eio.write_json(dst, upload)
  return base.ScoreResult({"samples": len(recs), "upload_rows": len(upload)},
                          [f"VQAv2: wrote the EvalAI upload file {dst} ({len(upload)} rows, "
                           f"{len(recs)} answered)"], {"upload": str(dst)})

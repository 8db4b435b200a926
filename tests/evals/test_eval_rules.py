"""Per-benchmark scoring rules on hand-made cases (`docs/benchmarks.md` 2 and 3), and TextVQA / GQA /
VQAv2 / MMBench-upload paths on small synthetic ground truth."""
import json

import pytest

from acformer_jax.evals import io as eio
from acformer_jax.evals import llava_bench, mmbench, mme, pope, registry, scienceqa, vqa, xlsx


@pytest.mark.parametrize("raw,expected", [
    ("Two dogs.", "2 dogs"),
    ("The cat's toy", "cat 's toy"),
    ("dont", "don't"),
    ("3.5 inches", "3.5 inches"),
    ("hello-world", "hello world"),
    ("a - b", "b"),                      # spaced punctuation is deleted, then the article
    ("left/right", "left right"),
    ("Yes!", "yes"),
    ("none", "0"),
    ("An apple\tand\nthe pear", "apple and pear"),
    ("10:30", "10:30"),                  # colon is not in the punctuation list
    ("e.g. this", "eg this"),
])
def test_normalize_answer(raw, expected):
  assert vqa.normalize_answer(raw) == expected


def test_normalize_answer_caps_full_stop_removal_at_32():
  assert vqa.normalize_answer("." * 40) == "." * 8


@pytest.mark.parametrize("matches,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                              (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matches, expected):
  gts = ["cat"] * matches + ["dog"] * (10 - matches)
  assert vqa.vqa_accuracy("cat", gts) == pytest.approx(expected)


def _write_jsonl(path, recs):
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_textvqa_accuracy_on_synthetic_ground_truth(tmp_path):
  qs, answers, data, expected = [], [], [], []
  for i, k in enumerate([0, 1, 2, 3, 4, 7]):
    text = f"What is written on sign {i}?\nReference OCR token: STOP, {i}\n" \
           "Answer the question using a single word or phrase."
    qs.append({"question_id": f"img{i % 2}", "image": f"img{i % 2}.jpg", "text": text,
               "category": "default"})
    answers.append({"question_id": f"img{i % 2}", "prompt": text, "text": "The Stop."})
    # Ground truth written un-normalised: both sides must be normalised to match.
    gts = ["STOP"] * k + ["go"] * (10 - k)
    data.append({"image_id": f"img{i % 2}", "question": f"What is written on sign {i}?",
                 "answers": gts})
    expected.append({0: 0, 1: .3, 2: .6, 3: .9}.get(k, 1.0))
  _write_jsonl(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", qs)
  _write_jsonl(tmp_path / "answers.jsonl", answers)
  res = registry.get("textvqa").score(str(tmp_path / "answers.jsonl"), str(tmp_path))
  assert "accuracy" not in res.metrics  # no ground truth yet
  (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
  res = registry.get("textvqa").score(str(tmp_path / "answers.jsonl"), str(tmp_path))
  assert res.metrics["accuracy"] == pytest.approx(100 * sum(expected) / len(expected))


def test_gqa_exact_match_on_balanced_questions(tmp_path):
  qs = [{"question_id": str(i), "image": "n1.jpg", "text": "q?", "category": "default"}
        for i in range(5)]
  preds = ["Yes.", "left", "Red", "no", "tree"]
  gt = {"0": ("yes", True), "1": ("right", True), "2": ("red", True), "3": ("no", False),
        "4": ("trees", True)}
  _write_jsonl(tmp_path / "llava_gqa_testdev_balanced.jsonl", qs)
  _write_jsonl(tmp_path / "a.jsonl", [{"question_id": str(i), "prompt": "q?", "text": t}
                                      for i, t in enumerate(preds)])
  (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(
      {k: {"answer": a, "isBalanced": b} for k, (a, b) in gt.items()}))
  res = registry.get("gqa").score(str(tmp_path / "a.jsonl"), str(tmp_path),
                                  out=str(tmp_path / "pred.json"))
  assert (res.metrics["correct"], res.metrics["total"]) == (2, 4)  # "3" is not balanced
  assert json.loads((tmp_path / "pred.json").read_text())[0] == {"questionId": "0",
                                                                 "prediction": "yes"}


def test_vqav2_upload_covers_test2015_with_empty_answers(tmp_path):
  full = [{"question_id": i, "image": "x.jpg", "text": "q"} for i in range(6)]
  _write_jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", full)
  _write_jsonl(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", full[1:3])
  _write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Two"},
                                      {"question_id": 2, "text": "A dog."}])
  registry.get("vqav2").score(str(tmp_path / "a.jsonl"), str(tmp_path), out=str(tmp_path / "u"))
  upload = json.loads((tmp_path / "u").read_text())
  assert [u["answer"] for u in upload] == ["", "2", "dog", "", "", ""]


@pytest.mark.parametrize("text,expected", [
    ("No", "no"), ("Yes", "yes"), ("no.", "no"), ("There is not a dog.", "no"),
    ("Yes, there is. No other.", "yes"), ("NO", "yes"), ("No, there isn't", "no"), ("", "yes"),
])
def test_pope_yes_no(text, expected):
  assert pope.yes_no(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("Nope", "no"),
    ("The answer is yes", "other"), ("noyes", "no"), ("  yes", "other"),
])
def test_mme_parse_prediction(text, expected):
  assert mme.parse_prediction(text) == expected


def test_mme_question_restoration():
  assert mme.original_question("Is it red?\nAnswer the question using a single word or "
                               "phrase.") == ("Is it red? Please answer yes or no.",
                                              "Is it red?  Please answer yes or no.")


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("C. tiger", "C"), ("The answer is D.", "D"), ("The answer is E", "FAILED"),
    ("The answer is A. The answer is B.", "FAILED"), ("b", "FAILED"), ("B.", "FAILED"),
    (" B", "FAILED"),
])
def test_scienceqa_parse_letter(text, expected):
  assert scienceqa.parse_letter(text) == expected


def test_scienceqa_counts_multiline_options():
  q = "Which closing is correct?\nA. Thanks,\nTony\nB. thanks,\nTony"
  assert scienceqa.num_choices(q) == 2


@pytest.mark.parametrize("answer,expected", [
    ("B", "B"), ("(C)", "C"), ("The answer is D.", "D"), ("A", "A"),
    ("A cat or a dog on B", None), ("A or B", None), ("A dog is shown here", "B"),
    ("a dog", "B"), ("I think it is: C", "C"),
])
def test_mmbench_choice_extraction(answer, expected):
  assert mmbench.extract_choice(answer, {"A": "cat", "B": "dog", "C": "bird"}) == expected


def test_llava_bench_rounding_rule():
  reviews = [{"category": "llava_bench_conv", "tuple": [8.0, 7.0]},
             {"category": "llava_bench_conv", "tuple": [9.0, 6.0]},
             {"category": "llava_bench_detail", "tuple": [7.0, 7.0]}]
  out = llava_bench.summarize_reviews(reviews, "r.jsonl")
  assert out == {"all": round(6.667 / 8.0 * 100, 1), "conv": round(6.5 / 8.5 * 100, 1),
                 "detail": 100.0}


def test_xlsx_round_trip(tmp_path):
  header = ["index", "question", "A", "prediction"]
  rows = [[1, "What & <why>?", None, "B"], [1000001, "tab\tand\nnewline", "x", True]]
  xlsx.write_table(tmp_path / "t.xlsx", header, rows)
  back = xlsx.read_table(tmp_path / "t.xlsx")
  assert back == [dict(zip(header, r)) for r in rows]


def _mmbench_tsv(path, rows):
  cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source",
          "l2-category", "comment", "split", "image"]
  lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
  path.write_text("\n".join(lines) + "\n")


def test_mmbench_circular_scoring_and_upload_from_tsv(tmp_path):
  base = {"question": "Q?", "hint": "nan", "A": "cat", "B": "dog", "answer": "A",
          "category": "animals", "split": "dev", "image": "aGk="}
  rows = [dict(base, index=0), dict(base, index=1000000, A="dog", B="cat", answer="B"),
          dict(base, index=1, answer="B"), dict(base, index=1000001, A="dog", B="cat",
                                                 answer="A")]
  _mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", rows)
  # q0: both copies right; q1: second copy wrong.
  _write_jsonl(tmp_path / "a.jsonl", [{"question_id": i, "text": t} for i, t in
                                      [(0, "A"), (1000000, "B"), (1, "B"), (1000001, "B")]])
  res = mmbench.score(str(tmp_path / "a.jsonl"), str(tmp_path), out=str(tmp_path / "u.xlsx"))
  assert (res.metrics["correct"], res.metrics["questions"]) == (1, 2)
  sheet = xlsx.read_table(tmp_path / "u.xlsx")
  assert list(sheet[0]) == ["index", "question", "A", "B", "C", "D", "prediction", "answer",
                            "split"]
  assert [r["prediction"] for r in sheet] == ["A", "B", "B", "B"]
  assert sheet[0]["C"] is None and sheet[1]["index"] == 1000000


def test_fixture_upload_sheet_reads():
  from tests import paths  # pylint: disable=g-import-not-at-top
  sheet = xlsx.read_table(
      paths.fixture("mmbench/answers_upload/mmbench_dev_20230712/llava-v1.5-13b.xlsx"))
  assert len(sheet) == 4377 and sheet[0]["index"] == 241 and sheet[0]["answer"] == "B"
  assert sheet[0]["C"] is None


def test_is_missing_follows_pandas_na():
  assert all(eio.is_missing(v) for v in ("", "nan", "None", "N/A", None, float("nan")))
  assert not any(eio.is_missing(v) for v in ("0", "no", "A", 0))

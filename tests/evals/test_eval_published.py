"""The scorers reproduce LLaVA-1.5-13B's published numbers from LLaVA's own answer files
(tests/fixtures/eval/PROVENANCE.md; `docs/benchmarks.md` 5). Each fixture file is parsed once per module."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from acformer_jax.evals import registry
from tests import paths

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = paths.EVAL_FIXTURES


def _stored(rel):
  return str(paths.fixture(rel))


def _score(name, answers, data, **kw):
  """Scores the stored (compressed) answer file against the fixture folder `data`."""
  return registry.get(name).score(_stored(answers), str(FIX / data), **kw)


@pytest.fixture(scope="module")
def pope():
  return _score("pope", "pope/answers/llava-v1.5-13b.jsonl", "pope")


@pytest.fixture(scope="module")
def mme():
  return _score("mme", "mme/answers/llava-v1.5-13b.jsonl", "mme")


def test_pope_mean_f1_and_splits(pope):
  m = pope.metrics
  assert f"{m['f1_mean']:.1f}" == "85.9"
  assert pope.summary[0] == "POPE F1 (mean of 3 splits): 85.9"
  expected = {"random": (88.01, 97.44, 78.80, 87.14, 41.68, 2910),
              "popular": (87.43, 95.25, 78.80, 86.25, 41.37, 3000),
              "adversarial": (85.50, 90.99, 78.80, 84.46, 43.30, 3000)}
  for split, (acc, prec, rec, f1, yes, n) in expected.items():
    got = [m[f"{split}_{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")]
    assert [round(x, 2) for x in got] == [acc, prec, rec, f1, yes]
    assert m[f"{split}_n"] == n


def test_mme_perception_cognition_and_subtasks(mme):
  m = mme.metrics
  assert f"{m['perception']:.1f}" == "1531.3"
  assert f"{m['cognition']:.2f}" == "295.36"
  leaderboard = {"existence": 185.00, "count": 155.00, "position": 133.33, "color": 170.00,
                 "posters": 160.54, "celebrity": 152.94, "scene": 161.25, "landmark": 170.50,
                 "artwork": 117.75, "OCR": 125.00, "commonsense_reasoning": 127.86,
                 "numerical_calculation": 42.50, "text_translation": 77.50,
                 "code_reasoning": 47.50}
  assert {k: round(m[k], 2) for k in leaderboard} == leaderboard
  assert "MME perception: 1531.3" in mme.summary[0]
  assert mme.summary[1] == "MME cognition: 295.36"


def test_scienceqa_counts_and_img_accuracy():
  res = _score("scienceqa", "scienceqa/answers/llava-v1.5-13b_output.jsonl", "scienceqa")
  m = res.metrics
  assert (m["correct"], m["total"]) == (3155, 4241)
  assert (m["img_correct"], m["img_total"]) == (1445, 2017)
  assert f"{m['img_accuracy']:.1f}" == "71.6"
  # LLaVA's own result file agrees.
  llava = json.loads(paths.fixture_text("scienceqa/answers/llava-v1.5-13b_result.json"))
  assert (llava["correct"], llava["count"]) == (m["correct"], m["total"])


def test_scienceqa_one_line_answer_file_is_rejected_with_hint():
  with pytest.raises(ValueError, match=r"missing answers for 4240 of 4241.*_output\.jsonl"):
    _score("scienceqa", "scienceqa/answers/llava-v1.5-13b.jsonl", "scienceqa")


def test_mmbench_dev_circular_accuracy():
  res = _score("mmbench", "mmbench/answers/mmbench_dev_20230712/llava-v1.5-13b.jsonl",
               "mmbench")
  m = res.metrics
  assert f"{m['circular_accuracy']:.1f}" == "67.7"
  assert (m["correct"], m["questions"], m["rows"]) == (796, 1176, 4377)
  assert m["undecided_rows"] == 0


def test_vizwiz_upload_equals_llava_upload(tmp_path):
  out = tmp_path / "vizwiz_upload.json"
  res = _score("vizwiz", "vizwiz/answers/llava-v1.5-13b.jsonl", "vizwiz", out=str(out))
  ours = json.loads(out.read_text())
  ref = json.loads(paths.fixture_text("vizwiz/answers_upload/llava-v1.5-13b.json"))
  assert len(ours) == len(ref) == 8000
  assert sum(a == b for a, b in zip(ours, ref)) == 8000
  assert res.files["upload"] == str(out)


def test_mmvet_judge_input_and_grades(tmp_path):
  out = tmp_path / "mmvet.json"
  one = _score("mmvet", "mm-vet/answers/llava-v1.5-13b.jsonl", "mm-vet", out=str(out),
               judge=(_stored("mm-vet/results/llava-v1.5-13b_gpt-4-grade-1runs.json"),))
  assert out.read_bytes() == paths.fixture_bytes("mm-vet/results/llava-v1.5-13b.json")
  assert f"{one.metrics['total']:.1f}" == "36.1" and one.metrics["num_runs"] == 1
  three = _score("mmvet", "mm-vet/answers/llava-v1.5-13b.jsonl", "mm-vet", out=str(out),
                 judge=(_stored("mm-vet/results/llava-v1.5-13b_gpt-4-grade-3runs.json"),))
  assert [round(x, 1) for x in three.metrics["runs"]] == [36.1, 36.5, 36.3]
  assert f"{three.metrics['total']:.1f}" == "36.3"
  seven = _score("mmvet", "mm-vet/answers/llava-v1.5-13b.jsonl", "mm-vet", out=str(out),
                 judge=(_stored("mm-vet/results/llava-v1.5-7b_gpt-4-grade-3runs.json"),))
  assert [round(x, 1) for x in seven.metrics["runs"]] == [31.2, 30.8, 31.2]
  assert (f"{seven.metrics['total']:.1f}", f"{seven.metrics['std']:.1f}") == ("31.1", "0.2")


def test_llava_bench_from_reviews():
  reviews = tuple(_stored(f"llava-bench-in-the-wild/reviews/llava-v1.5-13b-eval{i}.jsonl")
                  for i in (1, 2, 3))
  res = _score("llava_bench", "llava-bench-in-the-wild/answers/llava-v1.5-13b.jsonl",
               "llava-bench-in-the-wild", judge=reviews)
  assert f"{res.metrics['relative_score']:.1f}" == "72.5"
  seven = tuple(r.replace("13b", "7b") for r in reviews)
  # 7B reviews graded other answers: the answer-id check must refuse them for 13B answers.
  with pytest.raises(ValueError, match="graded answer"):
    _score("llava_bench", "llava-bench-in-the-wild/answers/llava-v1.5-13b.jsonl",
           "llava-bench-in-the-wild", judge=seven)


def test_cli_prints_headline_and_json_last_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "acformer_jax.evaluate", "score", "--benchmark", "mme",
         "--answers", _stored("mme/answers/llava-v1.5-13b.jsonl"), "--data", str(FIX / "mme")]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith("MME perception: 1531.3 ")
  assert "MME cognition: 295.36" in lines
  metrics = json.loads(lines[-1])
  assert metrics["benchmark"] == "mme" and round(metrics["perception"], 1) == 1531.3
  proc = subprocess.run(cmd[:5] + ["sqa"] + cmd[6:], capture_output=True, text=True, env=env,
                        cwd=tmp_path)
  assert proc.returncode == 2 and "unknown benchmark 'sqa'" in proc.stderr
  assert proc.stdout == ""


@pytest.mark.parametrize("bench,questions,answers", [
    ("pope", "pope/llava_pope_test.jsonl", "pope/answers/llava-v1.5-13b.jsonl"),
    ("mme", "mme/llava_mme.jsonl", "mme/answers/llava-v1.5-13b.jsonl"),
    ("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl",
     "textvqa/answers/llava-v1.5-13b.jsonl"),
    ("gqa", "gqa/llava_gqa_testdev_balanced.jsonl",
     "gqa/answers/llava_gqa_testdev_balanced/llava-v1.5-13b.jsonl"),
    ("vizwiz", "vizwiz/llava_test.jsonl", "vizwiz/answers/llava-v1.5-13b.jsonl"),
    ("mmvet", "mm-vet/llava-mm-vet.jsonl", "mm-vet/answers/llava-v1.5-13b.jsonl"),
    ("scienceqa", "scienceqa/llava_test_CQM-A.json",
     "scienceqa/answers/llava-v1.5-13b_output.jsonl"),
])
def test_question_files_load_and_prompts_match_llava_answers(bench, questions, answers):
  """LLaVA's question files pass validation verbatim, and our answer-file `prompt` equals
  the one LLaVA wrote for every question (same order)."""
  from acformer_jax.evals import prompts, scienceqa  # pylint: disable=g-import-not-at-top
  reqs = [prompts.build_request(bench, q)
          for q in registry.read_questions(bench, paths.fixture(questions))]
  if bench == "scienceqa":
    llava = {r["question_id"]: r["prompt"]
             for r in scienceqa.read_predictions(paths.fixture(answers))}
    assert [r.answer_prompt for r in reqs] == [llava[r.question_id] for r in reqs]
  else:
    llava = [json.loads(x) for x in paths.fixture_text(answers).splitlines()]
    assert [(r.question_id, r.answer_prompt) for r in reqs] == [
        (a["question_id"], a["prompt"]) for a in llava]

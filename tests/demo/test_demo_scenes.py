"""The offline shapes demo: builds, answers need the image, eval export and scoring."""
import collections
import json

import numpy as np
import pytest
from PIL import Image

from acformer_jax import demo
from acformer_jax.data.templates import SHORT_ANSWER_SUFFIX
from acformer_jax.data.builders import AcformerDemo
from acformer_jax.data.pipeline import record_conversations


def test_builds_offline_with_train_and_test(demo_data_dir, tmp_path):
  b = AcformerDemo(config="qa_tiny", data_dir=str(demo_data_dir))
  train, test = b.as_data_source("train"), b.as_data_source("test")
  assert (len(train), len(test)) == (256, 32)
  r = test[0]
  assert Image.open(__import__("io").BytesIO(r["image"])).size == (56, 56)
  conv = record_conversations(r)
  assert conv[0]["value"].startswith("<image>\n") and conv[0]["value"].endswith(SHORT_ANSWER_SUFFIX)
  assert conv[1]["value"] == json.loads(r["meta"])["answer"]
  assert any(len(record_conversations(train[i])) == 4 for i in range(20))  # multi-turn samples exist
  cap = AcformerDemo(config="caption_tiny", data_dir=str(tmp_path))
  cap.download_and_prepare()
  c = record_conversations(cap.as_data_source("train")[0])
  assert "<image>" in c[0]["value"] and c[1]["value"].endswith(".")


def test_answers_balanced_and_text_only_model_at_chance():
  train = list(demo.generate("qa", "train", 2000, image_size=56, with_images=False))
  test = list(demo.generate("qa", "test", 1000, image_size=56, with_images=False))
  for split in (train, test):
    by_cat = collections.defaultdict(collections.Counter)
    for s in split:
      by_cat[s["meta"]["category"]][s["meta"]["answer"]] += 1
    assert set(by_cat) == set(demo.CATEGORIES)
    for cat, counts in by_cat.items():
      assert set(counts) == set(demo.ANSWERS[cat]) and max(counts.values()) - min(counts.values()) <= 1
  # Best text-only predictor: the majority train answer for each exact question text.
  table = collections.defaultdict(collections.Counter)
  for s in train:
    table[s["meta"]["question"]][s["meta"]["answer"]] += 1
  for cat in demo.CATEGORIES:
    items = [s for s in test if s["meta"]["category"] == cat]
    hits = [table[s["meta"]["question"]].most_common(1)[0][0] == s["meta"]["answer"]
            for s in items if table[s["meta"]["question"]]]
    chance = 1.0 / len(demo.ANSWERS[cat])
    assert np.mean(hits) < chance + 0.08, (cat, np.mean(hits), chance)


def test_pixels_carry_the_answer():
  for s in demo.generate("qa", "test", 60, image_size=56):
    img = np.asarray(Image.open(__import__("io").BytesIO(s["image"])))
    m = s["meta"]
    objs = m["objects"]
    for o in objs:  # every object is drawn, solid, at its recorded centre
      x, y = (int(round(v)) for v in o["center"])
      assert tuple(img[y, x]) == demo.COLORS[o["color"]]
    q = m["question"]
    if m["category"] == "color":
      assert [o["color"] for o in objs if o["shape"] in q] == [m["answer"]]
    elif m["category"] == "shape":
      assert [o["shape"] for o in objs if f" {o['color']} " in q] == [m["answer"]]
    elif m["category"] == "count":
      assert sum(f"many {o['shape']}s" in q for o in objs) == int(m["answer"])
    elif m["category"] == "position":
      target = [o for o in objs if f"the {o['color']} {o['shape']}?" in q]
      assert len(target) == 1 and tuple(target[0]["cell"]) == demo.CORNERS[m["answer"]]
    else:
      present = any(f"a {o['color']} {o['shape']} in" in q for o in objs)
      assert present == (m["answer"] == "yes")


def test_export_matches_builder_test_split_and_scoring(demo_data_dir, tmp_path):
  out = demo.export_eval(tmp_path / "demo_eval", image_size=56, num_test=32)
  questions = [json.loads(x) for x in open(out / "questions.jsonl")]
  gt = [json.loads(x) for x in open(out / "ground_truth.jsonl")]
  assert len(questions) == len(gt) == 32
  assert set(questions[0]) == {"question_id", "image", "text", "category"}
  test = AcformerDemo(config="qa_tiny", data_dir=str(demo_data_dir)).as_data_source("test")
  by_name = {r["image_path"].decode(): r for r in (test[i] for i in range(len(test)))}
  for q, g in zip(questions, gt):
    assert q["question_id"] == g["question_id"] and q["category"] == g["category"]
    r = by_name[q["image"]]
    assert (out / "images" / q["image"]).read_bytes() == r["image"]
    assert json.loads(r["meta"])["answer"] == g["answer"]
    assert "<image>" + "\n" + q["text"] == record_conversations(r)[0]["value"]
  perfect = demo.score_demo([{"question_id": g["question_id"], "text": g["answer"].upper() + "."} for g in gt], gt)
  assert perfect["overall"] == 100.0 and perfect["num_missing"] == 0
  assert set(perfect["per_category"]) <= set(demo.CATEGORIES)
  wrong = demo.score_demo([{"question_id": g["question_id"], "text": "purple banana"} for g in gt], gt)
  assert wrong["overall"] == 0.0
  half = demo.score_demo([{"question_id": g["question_id"], "text": g["answer"]} for g in gt[:16]], gt)
  assert half["overall"] == 50.0 and half["num_missing"] == 16
  # The prior baseline answers each category with its most frequent gold answer.
  from collections import Counter
  by_cat = {}
  for g in gt:
    by_cat.setdefault(g["category"], []).append(demo.normalize_answer(g["answer"]))
  expect = 100.0 * sum(Counter(v).most_common(1)[0][1] for v in by_cat.values()) / len(gt)
  assert perfect["prior_baseline"] == pytest.approx(expect)
  assert 0.0 < perfect["prior_baseline"] < 100.0


@pytest.mark.parametrize("pred,gt,ok", [
    ("Yes.", "yes", True), ("No, there is not.", "no", False), ("Two", "2", True), ("Top-left", "top left", True),
    ("The red one", "red", False), ("  RED \n because", "red", True), ("a circle", "circle", True),
])
def test_normalize_answer(pred, gt, ok):
  assert (demo.normalize_answer(pred) == demo.normalize_answer(gt)) == ok

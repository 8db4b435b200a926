"""Runner (`evaluate run`) and input validation: LLaVA prompts, answer-file format and order,
resume, host sharding, bad input (`docs/benchmarks.md` 1, 6). generate_fn here is a deterministic test
double for the runner only."""
import base64
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from acformer_jax.evals import io as eio
from acformer_jax.evals import prompts, registry, runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
          "assistant gives helpful, detailed, and polite answers to the user's questions.")
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def test_prompts_follow_llava():
  pope = prompts.build_request("pope", {"question_id": 3, "image": "x.jpg",
                                        "text": f"Is there a dog?\n{SHORT}", "category": "random"})
  assert pope.prompt == f"{SYSTEM} USER: <image>\nIs there a dog?\n{SHORT} ASSISTANT:"
  assert (pope.answer_prompt, pope.max_new_tokens, pope.image) == (
      f"Is there a dog?\n{SHORT}", 128, "x.jpg")
  sqa = prompts.build_request("scienceqa", {"id": "5", "image": "5/image.png", "conversations": [
      {"from": "human", "value": "<image>\nContext: hot.\nWhich?\nA. x\nB. y"},
      {"from": "gpt", "value": "B"}]})
  assert sqa.prompt == (f"{SYSTEM} USER: <image>\nContext: hot.\nWhich?\nA. x\nB. y\n{LETTER} "
                        "ASSISTANT:")
  assert sqa.answer_prompt == f"<image>\nContext: hot.\nWhich?\nA. x\nB. y\n{LETTER}"
  assert (sqa.max_new_tokens, sqa.convert_rgb) == (1024, False)
  text_only = prompts.build_request("scienceqa", {"id": "4", "conversations": [
      {"from": "human", "value": "Which?\nA. x\nB. y"}, {"from": "gpt", "value": "A"}]})
  assert text_only.image is None
  assert text_only.prompt == f"{SYSTEM} USER: Which?\nA. x\nB. y\n{LETTER} ASSISTANT:"
  mmb = prompts.build_request("mmbench", {"index": "7", "question": "Which?", "hint": "Look.",
                                          "A": "cat", "B": "dog", "C": "None", "D": "emu",
                                          "image": "aGk="})
  assert mmb.prompt == (f"{SYSTEM} USER: <image>\nLook.\nWhich?\nA. cat\nB. dog\n{LETTER} "
                        "ASSISTANT:")
  assert mmb.answer_prompt == "Look.\nWhich?\nA. cat\nB. dog"
  assert mmb.extra == {"round_id": 0, "options": ["cat", "dog"], "option_char": ["A", "B"]}
  assert prompts.build_request("mmvet", {"question_id": 0, "image": "v1_0.png",
                                         "text": "What?"}).max_new_tokens == 1024


def _pope_set(tmp_path, n=7, mode="RGB"):
  (tmp_path / "img").mkdir(exist_ok=True)
  for i in range(3):
    Image.new(mode, (8 + i, 6), 50 * i).save(tmp_path / "img" / f"im{i}.png")
  qs = [{"question_id": i + 1, "image": f"im{i % 3}.png",
         "text": f"Is there a thing {i}?\n{SHORT}", "category": "random"} for i in range(n)]
  path = tmp_path / "questions.jsonl"
  path.write_text("".join(json.dumps(q) + "\n" for q in qs))
  return registry.read_questions("pope", path), tmp_path / "img"


class Engine:
  """Deterministic answers; records what it was asked; can fail on a given call."""

  def __init__(self, fail_on_call=None):
    self.calls, self.fail_on_call = [], fail_on_call

  def __call__(self, batch, *, max_new_tokens):
    self.calls.append([(img.mode, img.size, p) for img, p in batch])
    if self.fail_on_call == len(self.calls):
      raise RuntimeError("engine crashed")
    return [f"  Yes {img.size[0]} {len(p)}\n" for img, p in batch]


def test_run_writes_llava_answer_file(tmp_path):
  qs, images = _pope_set(tmp_path, mode="L")
  eng = Engine()
  out = runner.run("pope", qs, generate_fn=eng, output=tmp_path / "a.jsonl", images_dir=images,
                   model_id="m", progress=False)
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert [r["question_id"] for r in lines] == [q["question_id"] for q in qs]
  assert all(list(r) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
             for r in lines)
  assert lines[0]["prompt"] == qs[0]["text"] and lines[0]["text"] == lines[0]["text"].strip()
  assert eng.calls[0][0][:2] == ("RGB", (8, 6))  # jsonl loaders convert to RGB
  assert len(eng.calls) == len(qs)
  assert not list(tmp_path.glob("a.jsonl.part-*"))


def test_resume_after_crash_and_torn_line(tmp_path):
  qs, images = _pope_set(tmp_path)
  ref = runner.run("pope", qs, generate_fn=Engine(), output=tmp_path / "ref.jsonl",
                   images_dir=images, model_id="m", progress=False, batch_size=2)
  out = tmp_path / "a.jsonl"
  with pytest.raises(RuntimeError, match="engine crashed"):
    runner.run("pope", qs, generate_fn=Engine(fail_on_call=3), output=out, images_dir=images,
               model_id="m", progress=False, batch_size=2)
  assert not out.exists()  # no partial file under the final name
  part = runner.part_path(out, 0, 1)
  assert len(part.read_text().splitlines()) == 4
  with open(part, "a") as f:
    f.write('{"question_id": 5, "prom')  # crash mid-write
  eng = Engine()
  runner.run("pope", qs, generate_fn=eng, output=out, images_dir=images, model_id="m",
             progress=False, batch_size=2)
  assert sum(len(c) for c in eng.calls) == 3
  assert out.read_text() == ref.read_text()
  assert not part.exists()
  eng2 = Engine()  # a complete output: nothing left to do
  runner.run("pope", qs, generate_fn=eng2, output=out, images_dir=images, model_id="m",
             progress=False)
  assert eng2.calls == [] and out.read_text() == ref.read_text()


def test_two_hosts_merge_in_question_order(tmp_path):
  qs, images = _pope_set(tmp_path)
  ref = runner.run("pope", qs, generate_fn=Engine(), output=tmp_path / "ref.jsonl",
                   images_dir=images, model_id="m", progress=False, batch_size=3)
  out = tmp_path / "a.jsonl"
  host1, host0 = Engine(), Engine()
  runner.run("pope", qs, generate_fn=host1, output=out, images_dir=images, model_id="m",
             progress=False, process_index=1, process_count=2)
  assert not out.exists()
  runner.run("pope", qs, generate_fn=host0, output=out, images_dir=images, model_id="m",
             progress=False, process_index=0, process_count=2)
  asked = lambda eng: [p.split("thing ")[1].split("?")[0] for c in eng.calls for *_, p in c]
  assert asked(host0) == ["0", "1", "2", "3"] and asked(host1) == ["4", "5", "6"]
  assert out.read_text() == ref.read_text()


def test_missing_image_fails_before_generating(tmp_path):
  qs, images = _pope_set(tmp_path)
  (images / "im2.png").unlink()
  eng = Engine()
  with pytest.raises(ValueError, match=r"missing image.*question 3: .*im2\.png"):
    runner.run("pope", qs, generate_fn=eng, output=tmp_path / "a.jsonl", images_dir=images,
               progress=False)
  assert eng.calls == [] and not (tmp_path / "a.jsonl").exists()


def test_mmbench_base64_and_scienceqa_modes(tmp_path):
  buf = io.BytesIO()
  Image.new("L", (5, 4), 7).save(buf, format="PNG")
  b64 = base64.b64encode(buf.getvalue()).decode()
  tsv = tmp_path / "mmb.tsv"
  tsv.write_text("index\tquestion\thint\tA\tB\tanswer\timage\n"
                 f"3\tWhich?\tnan\tcat\tdog\tA\t{b64}\n")
  seen = []

  def eng(batch, *, max_new_tokens):
    seen.extend((None if im is None else im.mode, max_new_tokens) for im, _ in batch)
    return ["A"] * len(batch)
  out = runner.run("mmbench", registry.read_questions("mmbench", tsv), generate_fn=eng,
                   output=tmp_path / "m.jsonl", progress=False)
  rec = json.loads(out.read_text())
  assert rec["options"] == ["cat", "dog"] and rec["question_id"] == 3
  Image.new("P", (4, 4)).save(tmp_path / "s.png")
  sqa = [{"id": "1", "image": "s.png", "conversations": [
      {"from": "human", "value": "<image>\nQ?\nA. x\nB. y"}, {"from": "gpt", "value": "A"}]},
         {"id": "2", "conversations": [{"from": "human", "value": "Q?\nA. x\nB. y"},
                                       {"from": "gpt", "value": "B"}]}]
  (tmp_path / "sqa.json").write_text(json.dumps(sqa))
  runner.run("scienceqa", registry.read_questions("scienceqa", tmp_path / "sqa.json"),
             generate_fn=eng, output=tmp_path / "s.jsonl", images_dir=tmp_path, progress=False)
  assert seen == [("L", 1024), ("P", 1024), (None, 1024)]  # modes kept, text-only has none


def test_question_and_answer_file_errors(tmp_path):
  path = tmp_path / "q.jsonl"
  path.write_text('{"question_id": 1, "image": "a.jpg", "text": "t"}\n'
                  '{"question_id": 2, "image": "a.jpg", "text": "t", "label": "yes"}\n')
  with pytest.raises(ValueError, match=r"q\.jsonl: question 2: unknown field 'label'"):
    registry.read_questions("pope", path)
  path.write_text('{"question_id": 1, "image": "a.jpg", "text": "t"}\n' * 2)
  with pytest.raises(ValueError, match="duplicate question 1"):
    registry.read_questions("pope", path)
  path.write_text('{"question_id": 1, "image": "a.jpg", "text": "t"}\n{"question_id": 2,\n')
  with pytest.raises(ValueError, match=r"q\.jsonl:2: invalid JSON"):
    registry.read_questions("pope", path)
  with pytest.raises(ValueError, match="unknown benchmark 'popee'"):
    registry.get("popee")
  answers = [{"question_id": 1, "text": "a"}, {"question_id": 3, "text": "b"}]
  with pytest.raises(ValueError, match=r"missing answers for 1 of 3 questions, first: 2"):
    eio.index_answers(answers, [1, 2, 3], lambda r: r["question_id"], "ans.jsonl")
  with pytest.raises(ValueError, match=r"ans\.jsonl: duplicate answer for question 1"):
    eio.index_answers(answers + answers[:1], [1, 3], lambda r: r["question_id"], "ans.jsonl")
  (tmp_path / "a.jsonl").write_text('{"question_id": 1, "txt": "a"}\n')
  with pytest.raises(ValueError, match=r"answer 1: unknown field 'txt'"):
    eio.read_answers(tmp_path / "a.jsonl")


def test_output_of_another_question_file_is_rejected(tmp_path):
  qs, images = _pope_set(tmp_path)
  (tmp_path / "a.jsonl").write_text('{"question_id": 99, "prompt": "x", "text": "No"}\n')
  with pytest.raises(ValueError, match="question 99, which is not in the question file"):
    runner.run("pope", qs, generate_fn=Engine(), output=tmp_path / "a.jsonl",
               images_dir=images, progress=False)


def test_cli_run_then_score_demo(tmp_path):
  qs, images = _pope_set(tmp_path, n=4)
  data = tmp_path / "demo"
  data.mkdir()
  (data / "questions.jsonl").write_text((tmp_path / "questions.jsonl").read_text().replace(
      '"random"', '"color"'))
  (data / "ground_truth.jsonl").write_text("".join(
      json.dumps({"question_id": i + 1, "answer": a, "category": "color"}) + "\n"
      for i, a in enumerate(["red", "blue", "Red", "green"])))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "evals")]))
  cli = [sys.executable, "-m", "acformer_jax.evaluate"]
  subprocess.run(cli + ["run", "--checkpoint", str(tmp_path / "ckpt"), "--benchmark", "demo",
                        "--questions", str(data / "questions.jsonl"), "--images", str(images),
                        "--output", str(tmp_path / "ans.jsonl"), "--engine",
                        "eval_fake_engine:load", "--noprogress"],
                 check=True, env=env, capture_output=True, text=True)
  assert {json.loads(x)["text"] for x in (tmp_path / "ans.jsonl").read_text().splitlines()} \
      == {"red"}
  proc = subprocess.run(cli + ["score", "--benchmark", "demo", "--answers",
                               str(tmp_path / "ans.jsonl"), "--data", str(data), "--json"],
                        check=True, env=env, capture_output=True, text=True)
  assert json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(50.0)

"""Offline, procedurally generated demo dataset (shapes), its eval export and scorer.

Scenes are coloured shapes (kinds x colours x sizes) placed in distinct cells of a 3x3 grid on a
noisy grey background (optionally a dimmed scikit-image photo). Tasks:

* ``caption`` (stage 1, ``plain``): "A large red circle at the top left, a small blue square in
  the center."
* ``qa`` (stage 2, ``vicuna_v1``): POPE-style short-answer questions in five categories
  (``color``, ``shape``, ``count``, ``position``, ``existence``). Each scene is built *from* its
  answer, and answers are balanced per category (the question text is drawn independently of
  the answer), so a text-only model stays at chance; half of the training samples get a second,
  balanced yes/no turn (multi-turn).

The held-out ``test`` split is also exported as a LLaVA-style question file
(:func:`export_eval`) and scored by :func:`score_demo` (exact match after :func:`normalize_answer`,
per category). Nothing here downloads anything (spec ``docs/offline_assets.md`` 4).
"""
from __future__ import annotations

import io
import json
import pathlib
import re
import sys
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from acformer_jax.data.templates import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX

COLORS = {"red": (220, 30, 30), "green": (30, 165, 50), "blue": (35, 70, 230),
          "yellow": (245, 215, 25), "purple": (150, 45, 200)}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
CELLS = (("top left", "top", "top right"), ("left", "center", "right"),
         ("bottom left", "bottom", "bottom right"))
CORNERS = {"top left": (0, 0), "top right": (0, 2), "bottom left": (2, 0), "bottom right": (2, 2)}
COUNTS = ("1", "2", "3", "4")
CATEGORIES = ("color", "shape", "count", "position", "existence")
ANSWERS = {"color": tuple(COLORS), "shape": SHAPES, "count": COUNTS,
           "position": tuple(CORNERS), "existence": ("yes", "no")}
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in this picture?",
                   "Give a short description of the image.", "List the shapes you see.")
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "coins", "camera")


def _where(cell) -> str:
  name = CELLS[cell[0]][cell[1]]
  return "in the center" if name == "center" else f"at the {name}"


def _obj(shape, color, rng, cell=None):
  return {"shape": shape, "color": color, "size": SIZES[rng.integers(2)], "cell": cell}


def _other(options: Sequence[str], exclude: str, rng) -> str:
  rest = [o for o in options if o != exclude]
  return rest[rng.integers(len(rest))]


def _place(objs: List[dict], rng) -> List[dict]:
  """Gives the objects without a cell distinct free cells of the 3x3 grid."""
  used = {o["cell"] for o in objs if o["cell"] is not None}
  free = [(r, c) for r in range(3) for c in range(3) if (r, c) not in used]
  rng.shuffle(free)
  for o in objs:
    if o["cell"] is None:
      o["cell"] = free.pop()
  return objs


def scene_for(category: str, answer: str, rng) -> tuple:
  """Builds (objects, question) whose correct answer is ``answer``."""
  pick = lambda seq: seq[rng.integers(len(seq))]  # noqa: E731
  if category == "color":
    shape = pick(SHAPES)
    objs = [_obj(shape, answer, rng)] + [_obj(_other(SHAPES, shape, rng), pick(tuple(COLORS)), rng)
                                         for _ in range(rng.integers(4))]
    question = f"What color is the {shape}?"
  elif category == "shape":
    color = pick(tuple(COLORS))
    objs = [_obj(answer, color, rng)] + [_obj(pick(SHAPES), _other(tuple(COLORS), color, rng), rng)
                                         for _ in range(rng.integers(4))]
    question = f"What shape is the {color} object?"
  elif category == "count":
    shape = pick(SHAPES)
    objs = [_obj(shape, pick(tuple(COLORS)), rng) for _ in range(int(answer))]
    objs += [_obj(_other(SHAPES, shape, rng), pick(tuple(COLORS)), rng) for _ in range(rng.integers(3))]
    question = f"How many {shape}s are there?"
  elif category == "position":
    shape, color = pick(SHAPES), pick(tuple(COLORS))
    objs = [_obj(shape, color, rng, CORNERS[answer])] + [_distractor(shape, color, rng) for _ in range(rng.integers(4))]
    question = f"In which corner is the {color} {shape}?"
  elif category == "existence":
    shape, color = pick(SHAPES), pick(tuple(COLORS))
    # 1-3 objects either way, so the object count says nothing about the answer.
    objs = [_distractor(shape, color, rng) for _ in range(rng.integers(3) + (answer == "no"))]
    if answer == "yes":
      objs.insert(rng.integers(len(objs) + 1), _obj(shape, color, rng))
    question = f"Is there a {color} {shape} in the image?"
  else:
    raise ValueError(f"unknown demo category {category!r}; expected one of {CATEGORIES}")
  return _place(objs, rng), question


def _distractor(shape: str, color: str, rng) -> dict:
  """An object that is not (shape, color) but often shares one attribute (POPE adversarial)."""
  kind = rng.integers(3)
  if kind == 0:
    return _obj(shape, _other(tuple(COLORS), color, rng), rng)
  if kind == 1:
    return _obj(_other(SHAPES, shape, rng), color, rng)
  return _obj(_other(SHAPES, shape, rng), _other(tuple(COLORS), color, rng), rng)


def caption(objs: Sequence[dict]) -> str:
  parts = [f"a {o['size']} {o['color']} {o['shape']} {_where(o['cell'])}"
           for o in sorted(objs, key=lambda o: o["cell"])]
  text = ", ".join(parts) + "."
  return text[0].upper() + text[1:]


def _background(size: int, rng, photo: bool) -> np.ndarray:
  grey = rng.integers(95, 165)
  base = np.full((size, size, 3), grey, np.float32)
  if photo:
    import skimage.data  # pylint: disable=import-outside-toplevel
    arr = getattr(skimage.data, _PHOTOS[rng.integers(len(_PHOTOS))])()
    img = Image.fromarray(arr).convert("RGB")
    w, h = img.size
    crop = int(min(w, h) * rng.uniform(0.5, 1.0))
    x, y = rng.integers(w - crop + 1), rng.integers(h - crop + 1)
    img = img.crop((x, y, x + crop, y + crop)).resize((size, size), Image.Resampling.BILINEAR)
    base = 0.35 * np.asarray(img.convert("L"), np.float32)[..., None] + 0.65 * base
  base += rng.integers(-10, 11, base.shape, dtype=np.int16)  # sensor-like noise
  return np.clip(base, 0, 255).astype(np.uint8)


def render(objs: Sequence[dict], size: int, rng, photo: bool = False) -> Image.Image:
  """Draws the objects (cell centres jittered) on a background; returns an RGB image."""
  img = Image.fromarray(_background(size, rng, photo))
  draw = ImageDraw.Draw(img)
  cell = size / 3.0
  for o in objs:
    r = cell * (0.40 if o["size"] == "large" else 0.26)
    jit = cell * 0.5 - r - 1
    cx = (o["cell"][1] + 0.5) * cell + rng.uniform(-jit, jit)
    cy = (o["cell"][0] + 0.5) * cell + rng.uniform(-jit, jit)
    fill = COLORS[o["color"]]
    if o["shape"] == "circle":
      draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif o["shape"] == "square":
      s = r * 0.85
      draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif o["shape"] == "triangle":
      draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:
      draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    o["center"] = (float(cx), float(cy))
  return img


def _png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def _balanced(values: Sequence[str], n: int, rng) -> List[str]:
  out = [values[i % len(values)] for i in range(n)]
  rng.shuffle(out)
  return out


def _rng(seed: int, split: str, stream: int):
  return np.random.default_rng([seed, {"train": 0, "test": 1}[split], stream, 7919])


def generate(task: str, split: str, num: int, *, image_size: int, seed: int = 0,
             photo_backgrounds: bool = False, with_images: bool = True) -> Iterator[dict]:
  """Yields LLaVA-style samples ``{id, image (PNG bytes), conversations, meta}``.

  Scenes/questions and pixels use separate random streams, so ``with_images=False`` (image
  ``None``, fast) yields the same conversations.
  """
  if task not in ("caption", "qa"):
    raise ValueError(f"demo task must be 'caption' or 'qa', got {task!r}")
  rng, pix_rng = _rng(seed, split, 0), _rng(seed, split, 1)
  draw = lambda objs: _png(render(objs, image_size, pix_rng, photo_backgrounds)) if with_images else None  # noqa: E731
  cats = _balanced(CATEGORIES, num, rng)
  answers = {c: iter(_balanced(ANSWERS[c], cats.count(c), rng)) for c in CATEGORIES}
  for i, cat in enumerate(cats):
    sid = f"demo_{task}_{split}_{i:06d}"
    if task == "caption":
      n = 1 + rng.integers(4)
      objs = _place([_obj(rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng) for _ in range(n)], rng)
      img = draw(objs)
      prompt = CAPTION_PROMPTS[rng.integers(len(CAPTION_PROMPTS))]
      conv = [{"from": "human", "value": f"{prompt}\n{IMAGE_TOKEN}"}, {"from": "gpt", "value": caption(objs)}]
      meta = {"objects": [{k: o[k] for k in ("shape", "color", "size", "cell", "center") if k in o} for o in objs]}
    else:
      answer = next(answers[cat])
      objs, question = scene_for(cat, answer, rng)
      img = draw(objs)
      conv = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER_SUFFIX}"},
              {"from": "gpt", "value": answer}]
      if split == "train" and rng.random() < 0.5:
        conv += _followup(objs, rng)
      meta = {"category": cat, "question": question, "answer": answer,
              "objects": [{k: o[k] for k in ("shape", "color", "size", "cell", "center") if k in o} for o in objs]}
    yield {"id": sid, "image": img, "conversations": conv, "meta": meta}


def _followup(objs: Sequence[dict], rng) -> List[dict]:
  """A second, balanced yes/no turn about the same scene."""
  present = {(o["shape"], o["color"]) for o in objs}
  if rng.random() < 0.5:
    shape, color = sorted(present)[rng.integers(len(present))]
    answer = "yes"
  else:
    absent = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in present]
    shape, color = absent[rng.integers(len(absent))]
    answer = "no"
  q = f"Is there a {color} {shape} in the image?\n{SHORT_ANSWER_SUFFIX}"
  return [{"from": "human", "value": q}, {"from": "gpt", "value": answer}]


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
                            / len(total)}


def export_eval(out_dir, *, image_size: int = 64, num_test: int = 500, seed: int = 0,
                photo_backgrounds: bool = False) -> pathlib.Path:
  """Writes the ``qa`` test split as ``questions.jsonl``, ``ground_truth.jsonl`` and ``images/``.

  Identical to the ``test`` split of the ``acformer_demo`` builder with the same settings.
  """
  out = pathlib.Path(out_dir)
  (out / "images").mkdir(parents=True, exist_ok=True)
  with open(out / "questions.jsonl", "w") as fq, open(out / "ground_truth.jsonl", "w") as fg:
    for qid, s in enumerate(generate("qa", "test", num_test, image_size=image_size, seed=seed,
                                     photo_backgrounds=photo_backgrounds)):
      name = f"{s['id']}.png"
      (out / "images" / name).write_bytes(s["image"])
      m = s["meta"]
      text = f"{m['question']}\n{SHORT_ANSWER_SUFFIX}"
      fq.write(json.dumps({"question_id": qid, "image": name, "text": text, "category": m["category"]}) + "\n")
      fg.write(json.dumps({"question_id": qid, "answer": m["answer"], "category": m["category"]}) + "\n")
  (out / "info.json").write_text(json.dumps(
      {"benchmark": "demo", "image_size": image_size, "num_questions": num_test, "seed": seed,
       "photo_backgrounds": photo_backgrounds, "categories": list(CATEGORIES),
       "answers": {c: list(v) for c, v in ANSWERS.items()}}, indent=2) + "\n")
  return out


def main(argv: Sequence[str]) -> int:
  """``export`` or ``score`` (absl; flags defined only when run as a program)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("export", "score"):
    raise app.UsageError("usage: python -m acformer_jax.data.demo {export|score} ...")
  need = ("out",) if argv[1] == "export" else ("answers", "ground_truth")
  missing = [f"--{n}" for n in need if not f[n].value]
  if missing:
    raise app.UsageError(f"{argv[1]}: missing required flag(s) {', '.join(missing)}")
  if argv[1] == "export":
    out = export_eval(f.out, image_size=f.image_size, num_test=f.num_test, seed=f.seed,
                      photo_backgrounds=f.photo_backgrounds)
    print(f"wrote {out}")
  else:
    read = lambda p: [json.loads(line) for line in open(p) if line.strip()]  # noqa: E731
    print(json.dumps(score_demo(read(f.answers), read(f.ground_truth)), indent=2))
  return 0


if __name__ == "__main__":
  from acformer_jax import cli
  cli.define("string", "out", None, "export: output folder (questions.jsonl, "
             "ground_truth.jsonl, images/).")
  cli.define("integer", "image_size", 64, "export: image size.")
  cli.define("integer", "num_test", 500, "export: number of questions.")
  cli.define("integer", "seed", 0, "export: seed.")
  cli.define("bool", "photo_backgrounds", False, "export: photo backgrounds.")
  cli.define("string", "answers", None, "score: LLaVA-style answers .jsonl.")
  cli.define("string", "ground_truth", None, "score: ground_truth.jsonl.")
  cli.run(lambda argv: sys.exit(main(argv)))

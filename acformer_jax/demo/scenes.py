"""Offline, procedurally generated demo scenes (coloured shapes) and their samples.

Scenes are coloured shapes (kinds x colours x sizes) placed in distinct cells of a 3x3 grid on a
noisy grey background (optionally a dimmed scikit-image photo). Tasks:

* ``caption`` (stage 1, ``plain``): "A large red circle at the top left, a small blue square in
  the center."
* ``qa`` (stage 2, ``vicuna_v1``): POPE-style short-answer questions in five categories
  (``color``, ``shape``, ``count``, ``position``, ``existence``). Each scene is built *from* its
  answer, and answers are balanced per category (the question text is drawn independently of
  the answer), so a text-only model stays at chance; half of the training samples get a second,
  balanced yes/no turn (multi-turn).

The held-out ``test`` split is exported as a LLaVA-style question file by
``demo/eval_export.py`` and scored by ``demo/scoring.py``. Nothing here downloads anything
(spec ``docs/offline_assets.md`` 4).
"""
from __future__ import annotations

import io
from typing import Iterator, List, Sequence

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
        conv += followup(objs, rng)
      meta = {"category": cat, "question": question, "answer": answer,
              "objects": [{k: o[k] for k in ("shape", "color", "size", "cell", "center") if k in o} for o in objs]}
    yield {"id": sid, "image": img, "conversations": conv, "meta": meta}


def followup(objs: Sequence[dict], rng) -> List[dict]:
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

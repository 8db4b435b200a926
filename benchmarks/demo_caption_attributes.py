"""Which object attributes a stage-1 demo model names: caption held-out scenes and score them.

  python benchmarks/demo_caption_attributes.py --checkpoint RUN/stage1/export [--size 56] [--samples 60]

Greedy-captions ``samples`` held-out caption scenes (``demo/scenes.py``, 1-4 shapes in a 3x3
grid) with a stage-1 export (``plain`` template, as trained), parses each generated
"a SIZE COLOUR SHAPE at the CELL" phrase and prints: the share of objects whose cell the
caption names, and among those the share with the right size (chance 50%), colour (20%) and
shape (25%). It tells which attributes stage 1 grounded before stage 2 asks about them
(docs/training.md "DINOv2 demo").
"""
from __future__ import annotations

import argparse
import collections
import io
import re
from typing import Dict, Iterable, Sequence, Tuple

from PIL import Image

from acformer_jax.demo import scenes

_PHRASE = re.compile(r"(small|large) (\w+) (\w+) (?:at the |in the )?([a-z ]+?)(?:,|\.|$)")


def parse_caption(text: str) -> Dict[str, Tuple[str, str, str]]:
  """``{cell name: (size, colour, shape)}`` for each phrase of a generated caption."""
  return {m.group(4).strip(): m.groups()[:3] for m in _PHRASE.finditer(text.lower())}


def score(objects: Iterable[Sequence[dict]], captions: Iterable[str]) -> Dict[str, Tuple[int, int]]:
  """``{attribute: (hits, total)}``; ``found`` counts objects whose cell the caption names,
  the attributes are scored on those."""
  hit, tot = collections.Counter(), collections.Counter()
  for objs, text in zip(objects, captions):
    pred = parse_caption(text)
    for o in objs:
      tot["found"] += 1
      p = pred.get(scenes.CELLS[o["cell"][0]][o["cell"][1]])
      if p is None:
        continue
      hit["found"] += 1
      for key, value in zip(("size", "color", "shape"), p):
        hit[key] += o[key] == value
        tot[key] += 1
  return {k: (hit[k], tot[k]) for k in ("found", "size", "color", "shape")}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", required=True, help="stage-1 export directory")
  ap.add_argument("--size", type=int, default=56, help="image size the model was trained at")
  ap.add_argument("--samples", type=int, default=60)
  args = ap.parse_args()
  from acformer_jax.inference import pipeline  # pylint: disable=import-outside-toplevel
  gen = pipeline.load_generator(args.checkpoint, mesh_shape=None, batch_size=20)
  samples = list(scenes.generate("caption", "test", args.samples, image_size=args.size, seed=0))
  prompts = [pipeline.conversation_prompt(
      [], s["conversations"][0]["value"].replace(scenes.IMAGE_TOKEN, "").strip(), has_image=True,
      template="plain") for s in samples]
  images = [Image.open(io.BytesIO(s["image"])).convert("RGB") for s in samples]
  captions = gen.generate(list(zip(images, prompts)), max_new_tokens=60)
  res = score([s["meta"]["objects"] for s in samples], captions)
  print("  ".join(f"{k} {h}/{t} ({h / max(t, 1):.0%})" for k, (h, t) in res.items()))


if __name__ == "__main__":
  main()

"""benchmarks/demo_caption_attributes.py: the caption parser and per-attribute scoring."""
import importlib.util

import numpy as np

from acformer_jax.demo import scenes
from tests.paths import ROOT

_spec = importlib.util.spec_from_file_location(
    "demo_caption_attributes", ROOT / "benchmarks" / "demo_caption_attributes.py")
cap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cap)


def _scene(seed):
  rng = np.random.default_rng(seed)
  objs = [scenes._obj(s, c, rng) for s, c in (("circle", "red"), ("triangle", "blue"), ("square", "green"))]
  return scenes._place(objs, rng)


def test_the_generators_own_captions_score_100_percent():
  objs = [_scene(s) for s in range(5)]
  res = cap.score(objs, [scenes.caption(o) for o in objs])
  assert res == {"found": (15, 15), "size": (15, 15), "color": (15, 15), "shape": (15, 15)}


def test_wrong_shapes_and_missing_objects_are_counted():
  objs = _scene(0)
  text = scenes.caption(objs).replace("circle", "diamond")
  first = sorted(objs, key=lambda o: o["cell"])[0]
  dropped = f"a {first['size']} {first['color']} {first['shape']} {scenes._where(first['cell'])}"
  assert cap.parse_caption(text)
  res = cap.score([objs], [text.replace(dropped[1:], "").replace(dropped.capitalize(), "")])
  assert res["found"] == (2, 3)
  res = cap.score([objs], [text])
  assert res["found"] == (3, 3) and res["shape"] == (2, 3) and res["color"] == (3, 3)

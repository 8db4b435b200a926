"""Linear probe: what a frozen tower's features say about the demo scenes, per block.

  python benchmarks/demo_feature_probe.py [--samples 2400] [--size 56] [--layers 0,3,6,9]

Renders ``samples`` demo caption scenes (``demo/scenes.py``, 1-4 shapes in a 3x3 grid) at
``size`` px, runs the tower and fits, on 3/4 of the scenes, one linear softmax classifier per
grid cell on the z-scored patch tokens of the selected block (all patches flattened): the
cell's colour (5 + empty) and its shape (4 + empty). Prints held-out accuracy over all cells
and over the occupied cells only. Layer 0 is the main job's random tower (``demo/recipe.tiny``:
patch 7, 64 wide); 1-12 are blocks of the real DINOv2-S/14 in
``.assets/dinov2_s14`` (``launch/setup.sh``). A probe over flattened tokens knows each token's
cell, so it bounds what a connector can extract; it does not show that one will.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from acformer_jax import config as config_lib
from acformer_jax.conversion.towers import load_hf_vision
from acformer_jax.demo import scenes
from acformer_jax.models import towers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def scenes_and_labels(n: int, size: int):
  """Images ``[n,S,S,3]`` in [0,1] and per-cell labels ``colour, shape [n,9]`` (0 = empty)."""
  images, colours, shapes = [], [], []
  for s in scenes.generate("caption", "train", n, image_size=size, seed=3):
    images.append(np.asarray(Image.open(io.BytesIO(s["image"])).convert("RGB"), np.float32) / 255)
    c, h = np.zeros(9, np.int32), np.zeros(9, np.int32)
    for o in s["meta"]["objects"]:
      cell = o["cell"][0] * 3 + o["cell"][1]
      c[cell] = 1 + tuple(scenes.COLORS).index(o["color"])
      h[cell] = 1 + scenes.SHAPES.index(o["shape"])
    colours.append(c)
    shapes.append(h)
  return np.stack(images), np.stack(colours), np.stack(shapes)


def tower_features(images: np.ndarray, layer: int) -> np.ndarray:
  """Patch tokens (CLS dropped) of block ``layer`` (0: the random demo tower)."""
  size = images.shape[1]
  if layer == 0:
    cfg = config_lib.VisionConfig(image_size=size, patch_size=7, hidden_size=64,
                                  intermediate_size=128, num_layers=3, num_heads=4)
    module = towers.build(cfg)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
  else:
    cfg, params = load_hf_vision(ROOT / ".assets" / "dinov2_s14", select_layer=layer)
    module = towers.build(dataclasses.replace(cfg, image_size=size))
  entry = towers.tower(cfg.tower)  # each tower's own normalisation, as training uses
  mean, std = entry.image_mean, entry.image_std
  fwd = jax.jit(lambda p, x: module.apply({"params": p}, x)[0][:, 1:])
  x = (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return np.concatenate([np.asarray(fwd(params, jnp.asarray(x[i:i + 200])))
                         for i in range(0, len(x), 200)])


def probe(features: np.ndarray, labels: np.ndarray, classes: int, steps: int = 400):
  """(held-out accuracy over all cells, over occupied cells) of a per-cell linear classifier."""
  n = len(features)
  f = features.reshape(n, -1)
  split = n * 3 // 4
  f = (f - f[:split].mean(0)) / (f[:split].std(0) + 1e-6)
  params = (jnp.zeros((f.shape[1], 9, classes)), jnp.zeros((9, classes)))
  opt = optax.adamw(1e-3, weight_decay=1e-2)
  state = opt.init(params)
  logits = lambda p, x: jnp.einsum("nd,dkc->nkc", x, p[0]) + p[1]  # noqa: E731
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()  # noqa: E731

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p, f[:split], labels[:split])
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    params, state = step(params, state)
  hit = np.asarray(logits(params, f[split:]).argmax(-1)) == labels[split:]
  occupied = labels[split:] > 0
  return float(hit.mean()), float(hit[occupied].mean())


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--samples", type=int, default=2400)
  ap.add_argument("--size", type=int, default=56)
  ap.add_argument("--layers", default="0,3,6,9")
  args = ap.parse_args()
  images, colours, shapes = scenes_and_labels(args.samples, args.size)
  print(f"{'tower / block':>22}  {'colour all':>10}  {'occupied':>8}  {'shape all':>9}  "
        f"{'occupied':>8}  {'features s':>10}")
  for layer in (int(v) for v in args.layers.split(",")):
    t = time.perf_counter()
    feats = tower_features(images, layer)
    secs = time.perf_counter() - t
    (ca, co), (sa, so) = probe(feats, colours, 6), probe(feats, shapes, 5)
    name = "random (main job)" if layer == 0 else f"DINOv2-S/14 block {layer}"
    print(f"{name:>22}  {ca:10.1%}  {co:8.1%}  {sa:9.1%}  {so:8.1%}  {secs:10.1f}")


if __name__ == "__main__":
  main()

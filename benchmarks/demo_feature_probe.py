"""Linear probe: what a frozen tower's features say about the demo scenes, per block.

  python benchmarks/demo_feature_probe.py [--samples 2400] [--size 56] [--layers 0,3,6,9]

Renders ``samples`` demo caption scenes (``demo/scenes.py``, 1-4 shapes in a 3x3 grid) at
``size`` px, runs the tower and fits, on 3/4 of the scenes, one linear softmax classifier per
grid cell on the z-scored patch tokens of the selected block (all patches flattened): the
cell's colour (5 + empty) and its shape (4 + empty). Prints held-out accuracy over all cells
and over the occupied cells only.

A second table looks at one token per object, the patch under the object's centre, after a
per-token LayerNorm (what ``connector.input_norm`` feeds the connector): a linear probe's
held-out accuracy for shape and colour, and the share of the token's variance that each
attribute explains (between-class over total variance, eta squared). A linear probe trained to
convergence finds even a faint direction; a model trained for a few hundred steps learns first
what explains most of the variance, so the share predicts which attribute a short run picks up
(docs/training.md "DINOv2 demo"). Layer 0 is the main job's random tower (``demo/recipe.tiny``:
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


def variance_share(x: np.ndarray, labels: np.ndarray) -> float:
  """Share of the total variance of ``x [n, d]`` explained by the class means of ``labels``."""
  x = np.asarray(x, np.float64)
  mean = x.mean(0)
  total = ((x - mean) ** 2).sum()
  between = sum((labels == k).sum() * ((x[labels == k].mean(0) - mean) ** 2).sum()
                for k in np.unique(labels))
  return float(between / total)


def object_tokens(features: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
  """The patch token under each object's centre: ``features [n, g*g, d]`` (row-major patch
  grid), ``centres [m, 3]`` = (scene index, x, y) in pixels -> ``[m, d]``."""
  g = int(round(np.sqrt(features.shape[1])))
  scene, x, y = centres[:, 0].astype(int), centres[:, 1], centres[:, 2]
  col = np.clip((x * g / size).astype(int), 0, g - 1)
  row = np.clip((y * g / size).astype(int), 0, g - 1)
  return features[scene, row * g + col]


def scenes_and_labels(n: int, size: int):
  """Images ``[n,S,S,3]`` in [0,1], per-cell labels ``colour, shape [n,9]`` (0 = empty) and
  one row per object ``[m, 5]``: scene index, centre x, centre y, shape, colour."""
  images, colours, shapes, objects = [], [], [], []
  for i, s in enumerate(scenes.generate("caption", "train", n, image_size=size, seed=3)):
    images.append(np.asarray(Image.open(io.BytesIO(s["image"])).convert("RGB"), np.float32) / 255)
    c, h = np.zeros(9, np.int32), np.zeros(9, np.int32)
    for o in s["meta"]["objects"]:
      cell = o["cell"][0] * 3 + o["cell"][1]
      shape, colour = scenes.SHAPES.index(o["shape"]), tuple(scenes.COLORS).index(o["color"])
      c[cell], h[cell] = 1 + colour, 1 + shape
      objects.append((i, *o["center"], shape, colour))
    colours.append(c)
    shapes.append(h)
  return np.stack(images), np.stack(colours), np.stack(shapes), np.asarray(objects, np.float32)


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
  """(held-out accuracy over all cells, over occupied cells) of a linear classifier per column
  of ``labels [n, cells]`` (class 0 = empty) on the flattened, z-scored ``features [n, ...]``."""
  n, cells = labels.shape
  f = features.reshape(n, -1)
  split = n * 3 // 4
  f = (f - f[:split].mean(0)) / (f[:split].std(0) + 1e-6)
  params = (jnp.zeros((f.shape[1], cells, classes)), jnp.zeros((cells, classes)))
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
  images, colours, shapes, objects = scenes_and_labels(args.samples, args.size)
  print(f"{'tower / block':>22}  {'colour all':>10}  {'occupied':>8}  {'shape all':>9}  "
        f"{'occupied':>8}  {'features s':>10}")
  per_object = []
  for layer in (int(v) for v in args.layers.split(",")):
    t = time.perf_counter()
    feats = tower_features(images, layer)
    secs = time.perf_counter() - t
    (ca, co), (sa, so) = probe(feats, colours, 6), probe(feats, shapes, 5)
    name = "random (main job)" if layer == 0 else f"DINOv2-S/14 block {layer}"
    print(f"{name:>22}  {ca:10.1%}  {co:8.1%}  {sa:9.1%}  {so:8.1%}  {secs:10.1f}")
    tok = object_tokens(feats, objects[:, :3], args.size)
    tok = (tok - tok.mean(1, keepdims=True)) / (tok.std(1, keepdims=True) + 1e-6)
    shape, colour = objects[:, 3].astype(np.int32), objects[:, 4].astype(np.int32)
    per_object.append((name, probe(tok, shape[:, None] + 1, 5)[1],
                       probe(tok, colour[:, None] + 1, 6)[1],
                       variance_share(tok, shape), variance_share(tok, colour)))
  print(f"\none token per object (under its centre, LayerNorm'ed), {args.size} px:")
  print(f"{'tower / block':>22}  {'shape probe':>11}  {'colour probe':>12}  {'shape var':>9}  "
        f"{'colour var':>10}")
  for name, sp, cp, sv, cv in per_object:
    print(f"{name:>22}  {sp:11.1%}  {cp:12.1%}  {sv:9.1%}  {cv:10.1%}")


if __name__ == "__main__":
  main()

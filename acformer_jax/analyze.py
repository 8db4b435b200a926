"""Visual-anchor analysis CLI: the paper's motivation figures for one image, any tower.

Usage::

  python -m acformer_jax.analyze --checkpoint DIR --image PATH --out DIR \
      [--budgets 64,144,256] [--norm_ratio 2.0] [--select_layer -2] [--resolution 518] \
      [--pad_to_square]

``DIR`` is an acformer_jax checkpoint (``model_config.json`` + ``params/``), a
transformers Llava directory or a transformers vision-tower directory of any registered
tower (CLIP, SigLIP, DINOv2: ``models/towers.py``). The image is preprocessed with the
tower's own mean/std. Writes to ``--out``: ``norm_maps.png`` (per-layer token norms over
the patch grid), ``<rows>_attention_maps.png`` (per-layer head-averaged attention rows:
``cls`` for CLS towers, ``received``, the mean attention each patch receives, for SigLIP),
``<rows>_attention_heads.png`` (per head, selection layer), ``probe_attention_heads.png``
(SigLIP with its pooling head), ``norm_profile.png``, ``pca.png`` (PCA of the selection
layer's patch features), ``anchors.png`` (the anchors of ``docs/method.md`` 1.3 for each
budget from the source the model's connector ranks; ``anchors_<source>.png`` for the
other sources) and ``summary.json`` (per-layer high-norm tokens; overlap of anchors and
high-norm tokens, per source). Budgets that do not fit the model's grid are scaled to the
same fraction of the grid (see ``analysis.stats.budgets_for``). Patch indices are
0-based, row-major.
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Dict, Optional, Sequence

import numpy as np
from absl import app

from acformer_jax import cli
from acformer_jax import config as config_lib

_CHECKPOINT = cli.define("string", "checkpoint", None, "acformer_jax checkpoint, transformers "
                         "Llava or CLIP directory.")
_IMAGE = cli.define("string", "image", None, "Image file (PNG/JPEG/...).")
_OUT = cli.define("string", "out", None, "Output directory for the PNGs and summary.json.")
_BUDGETS = cli.define("list", "budgets", ["64", "144", "256"], "Anchor budgets K, "
                      "comma-separated.")
_NORM_RATIO = cli.define("float", "norm_ratio", 2.0, "High-norm threshold: norm > ratio x "
                         "median patch norm.")
_SELECT_LAYER = cli.define("integer", "select_layer", None, "ViT layer whose attention "
                           "selects anchors (default: the checkpoint's).")
_RESOLUTION = cli.define("integer", "resolution", None, "Run the tower at this image size "
                         "(towers that interpolate positions, e.g. dinov2; default: the "
                         "checkpoint's).")
_PAD = cli.define("bool", "pad_to_square", False, "Pad to a square with the tower's mean "
                  "colour first (LLaVA stage 2 / eval).")
cli.show_common_flags()


def parse_budgets(items) -> list:
  """``["64", "144"]`` (or ``"64,144"``) -> ``[64, 144]``; raises ``app.UsageError``."""
  text = ",".join(items) if isinstance(items, (list, tuple)) else str(items)
  try:
    out = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise app.UsageError(f"--budgets wants comma-separated integers, got {text!r}") from None
  if not out or min(out) < 1:
    raise app.UsageError(f"--budgets wants positive integers, got {text!r}")
  return out


def _clean(x):
  """JSON-safe: NaN/inf -> None."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_clean(v) for v in x]
  return x


ROW_LABELS = {"cls": "CLS attention", "received": "mean attention received",
              "probe": "pooling-head probe attention"}


def analyze(checkpoint, image, out, *, budgets: Sequence[int] = (64, 144, 256),
            norm_ratio: float = 2.0, select_layer: Optional[int] = None,
            pad_to_square: bool = False, image_size: Optional[int] = None) -> Dict:
  """Runs the analysis and writes the figures + ``summary.json``; returns the summary."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from acformer_jax.analysis import figures, layers, loading, stats  # pylint: disable=import-outside-toplevel
  from acformer_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  from acformer_jax.models import connectors, towers  # pylint: disable=import-outside-toplevel
  from acformer_jax.models.anchors import select_anchors  # pylint: disable=import-outside-toplevel

  if norm_ratio <= 0:
    raise ValueError(f"--norm-ratio must be > 0, got {norm_ratio}")
  image_path = pathlib.Path(image)
  if not image_path.is_file():
    raise FileNotFoundError(f"--image {image_path} does not exist")
  ck = loading.load_vision(checkpoint, select_layer=select_layer)
  cfg = ck.config
  if image_size is not None and image_size != cfg.image_size:
    if not cfg.position_grid:
      raise ValueError(f"--resolution={image_size}: the {cfg.tower} tower's position "
                       f"embeddings are fixed to {cfg.image_size} px (no interpolation)")
    cfg = dataclasses.replace(cfg, image_size=image_size)
    problems = towers.validate(cfg)
    if cfg.image_size % cfg.patch_size or problems:
      raise ValueError(f"--resolution={image_size}: not a multiple of the patch "
                       f"{cfg.patch_size} ({problems})")
  entry = towers.tower(cfg.tower)
  try:
    pixels = preprocess.preprocess_image(str(image_path), cfg.image_size,
                                         pad_to_square=pad_to_square, mean=entry.image_mean,
                                         std=entry.image_std)
  except OSError as e:
    raise ValueError(f"--image {image_path}: not a readable image ({e})") from None
  run = layers.run_layers(cfg, ck.params, pixels[None])
  hidden, rows = np.asarray(run.hidden[:, 0]), np.asarray(run.rows[:, 0])  # [L+1,N+1,D], [L,H,N]
  grid, heads, n_layers = cfg.grid_size, cfg.num_heads, cfg.num_layers
  block = cfg.num_computed_layers
  norms = stats.token_norms(hidden)
  per_layer = stats.layer_summary(norms, rows, norm_ratio)
  sel_norms = norms[block, 1:]
  high = stats.high_norm_tokens(sel_norms, norm_ratio)
  sources = {run.row_kind: rows[block - 1],
             **{k: np.asarray(v[0]) for k, v in run.extras.items()}}

  requested = list(budgets)
  k = 0 if ck.connector is None else connectors.connector(ck.connector.type).anchor_budget(
      config_lib.ModelConfig(vision=cfg, connector=ck.connector))
  if k and k not in requested:
    requested.append(k)
  select = jax.jit(select_anchors, static_argnums=1)
  by_source = {}
  for name, attn in sources.items():
    sel = []
    for req, used in stats.budgets_for(heads, cfg.num_patches, requested):
      idx = np.asarray(select(jnp.asarray(attn[None]), used))[0]
      anchors = (idx[1:] - 1).astype(int)
      sel.append({"requested": req, "budget": used, "num_tokens": int(idx.shape[0]),
                  "anchors": [int(a) for a in anchors],
                  **stats.anchor_overlap(anchors, sel_norms, high, attn)})
    by_source[name] = sel
  proj, explained = stats.pca(hidden[block, 1:])

  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  mean, std = np.asarray(entry.image_mean), np.asarray(entry.image_std)
  shown = np.clip(pixels * std + mean, 0.0, 1.0)
  labels = [f"layer {d['layer']} (max/med {d['max_over_median']:.1f})" for d in per_layer]
  kind, label = run.row_kind, ROW_LABELS.get(run.row_kind, run.row_kind)
  figs = {
      "norm_maps": figures.layer_maps(
          norms[1:, 1:], grid, out / "norm_maps.png", cmap="inferno", labels=labels,
          title="Token norms per ViT layer"),
      f"{kind}_attention_maps": figures.layer_maps(
          rows.mean(axis=1), grid, out / f"{kind}_attention_maps.png", cmap="viridis",
          labels=[f"layer {i}" for i in range(1, n_layers + 1)],
          title=f"{label} per ViT layer (mean over heads)"),
      f"{kind}_attention_heads": figures.layer_maps(
          rows[block - 1], grid, out / f"{kind}_attention_heads.png", cmap="viridis",
          labels=[f"head {h}" for h in range(heads)],
          title=f"{label} per head, layer {block}"),
  }
  for name, attn in sources.items():
    if name != kind:
      figs[f"{name}_attention_heads"] = figures.layer_maps(
          attn, grid, out / f"{name}_attention_heads.png", cmap="viridis",
          labels=[f"head {h}" for h in range(heads)], title=f"{ROW_LABELS.get(name, name)} per head")
  figs["norm_profile"] = figures.norm_profile(per_layer, out / "norm_profile.png")
  figs["pca"] = figures.pca_figure(shown, proj, explained, sel_norms, high, grid, block,
                                   out / "pca.png")
  for name, sel in by_source.items():
    fig = "anchors" if name == run.used else f"anchors_{name}"
    figs[fig] = figures.anchors_figure(shown, grid, sel, high, out / f"{fig}.png",
                                       source=ROW_LABELS.get(name, name))
  summary = {
      "checkpoint": str(checkpoint), "checkpoint_kind": ck.kind, "image": str(image_path),
      "vision": {"tower": cfg.tower, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
                 "grid": grid, "num_layers": n_layers, "num_heads": heads,
                 "select_layer": cfg.select_layer, "selection_block": block,
                 "summary_token": "cls" if entry.has_cls else "mean of the patches"},
      "norm_ratio": norm_ratio,
      "layers": per_layer,
      "selection_layer": {"layer": block, "high_norm_tokens": [int(t) for t in high],
                          "pca_explained_variance": [float(e) for e in explained]},
      "anchor_source": run.used,
      "budgets": by_source[run.used],
      "anchor_sources": {n: {"label": ROW_LABELS.get(n, n), "budgets": sel}
                         for n, sel in by_source.items()},
      "figures": {k: v.name for k, v in figs.items()},
  }
  (out / "summary.json").write_text(json.dumps(_clean(summary), indent=1) + "\n")
  return summary


def _main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  missing = [f"--{n}" for n, f in (("checkpoint", _CHECKPOINT), ("image", _IMAGE), ("out", _OUT))
             if not f.value]
  if missing:
    raise app.UsageError(f"missing required flag(s): {', '.join(missing)}")
  budgets = parse_budgets(_BUDGETS.value)
  try:
    s = analyze(_CHECKPOINT.value, _IMAGE.value, _OUT.value, budgets=budgets,
                norm_ratio=_NORM_RATIO.value, select_layer=_SELECT_LAYER.value,
                pad_to_square=_PAD.value, image_size=_RESOLUTION.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(_OUT.value)
  for name in s["figures"].values():
    print(out / name)
  print(out / "summary.json")
  for b in s["budgets"]:
    print(f"K={b['budget']:>4} ({b['num_tokens']} tokens): anchors among top-norm "
          f"{100 * b['top_norm_overlap']:.0f}% (random {100 * b['random_expectation']:.0f}%), "
          f"{s['anchor_source']} attention mass {b['cls_attention_mass']:.2f}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """In-process entry (``argv`` without the program name); usage errors exit with 2."""
  try:
    return _main(cli.parse_in_process("analyze", argv if argv is not None else sys.argv[1:]))
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def run() -> None:
  cli.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  run()

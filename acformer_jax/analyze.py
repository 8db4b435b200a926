"""Visual-anchor analysis CLI: the paper's motivation figures for one image.

Usage::

  python -m acformer_jax.analyze --checkpoint DIR --image PATH --out DIR \
      [--budgets 64,144,256] [--norm_ratio 2.0] [--select_layer -2] [--pad_to_square]

``DIR`` is an acformer_jax checkpoint (``model_config.json`` + ``params/``), a
transformers Llava directory or a transformers CLIP directory. Writes to ``--out``: ``norm_maps.png`` (per-layer token
norms over the patch grid), ``cls_attention_maps.png`` (per-layer head-averaged CLS
attention), ``cls_attention_heads.png`` (per-head CLS attention of the selection layer),
``norm_profile.png``, ``pca.png`` (PCA of the selection layer's patch features),
``anchors.png`` (the anchors of ``docs/method.md`` 1.3 for each budget, over the image) and
``summary.json`` (per-layer high-norm tokens; overlap of anchors and high-norm tokens).
Budgets that do not fit the model's grid are scaled to the same fraction of the grid
(see ``analysis.stats.budgets_for``). Patch indices are 0-based, row-major.
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

_CHECKPOINT = cli.define("string", "checkpoint", None, "acformer_jax checkpoint, transformers "
                         "Llava or CLIP directory.")
_IMAGE = cli.define("string", "image", None, "Image file (PNG/JPEG/...).")
_OUT = cli.define("string", "out", None, "Output directory for the PNGs and summary.json.")
_BUDGETS = cli.define("list", "budgets", ["64", "144", "256"], "Anchor budgets K, "
                      "comma-separated.")
_NORM_RATIO = cli.define("float", "norm_ratio", 2.0, "High-norm threshold: norm > ratio x "
                         "median patch norm.")
_SELECT_LAYER = cli.define("integer", "select_layer", None, "ViT layer whose CLS attention "
                           "selects anchors (default: the checkpoint's).")
_PAD = cli.define("bool", "pad_to_square", False, "Pad to a square with the CLIP mean colour "
                  "first (LLaVA stage 2 / eval).")
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


def analyze(checkpoint, image, out, *, budgets: Sequence[int] = (64, 144, 256),
            norm_ratio: float = 2.0, select_layer: Optional[int] = None,
            pad_to_square: bool = False) -> Dict:
  """Runs the analysis and writes the figures + ``summary.json``; returns the summary."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from acformer_jax.analysis import figures, layers, loading, stats  # pylint: disable=import-outside-toplevel
  from acformer_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  from acformer_jax.models.anchors import select_anchors  # pylint: disable=import-outside-toplevel

  if norm_ratio <= 0:
    raise ValueError(f"--norm-ratio must be > 0, got {norm_ratio}")
  image_path = pathlib.Path(image)
  if not image_path.is_file():
    raise FileNotFoundError(f"--image {image_path} does not exist")
  ck = loading.load_vision(checkpoint, select_layer=select_layer)
  cfg = ck.config
  try:
    pixels = preprocess.preprocess_image(str(image_path), cfg.image_size, pad_to_square=pad_to_square)
  except OSError as e:
    raise ValueError(f"--image {image_path}: not a readable image ({e})") from None
  hidden, cls_attn = layers.all_layers(cfg, ck.params, pixels[None])
  hidden, cls_attn = np.asarray(hidden[:, 0]), np.asarray(cls_attn[:, 0])  # [L+1,N+1,D], [L,H,N]
  grid, heads, n_layers = cfg.grid_size, cfg.num_heads, cfg.num_layers
  block = cfg.num_computed_layers
  norms = stats.token_norms(hidden)
  per_layer = stats.layer_summary(norms, cls_attn, norm_ratio)
  sel_norms = norms[block, 1:]
  high = stats.high_norm_tokens(sel_norms, norm_ratio)

  requested = list(budgets)
  if ck.connector is not None and ck.connector.type in ("acformer", "top_p"):
    if ck.connector.num_queries not in requested:
      requested.append(ck.connector.num_queries)
  selections = []
  select = jax.jit(select_anchors, static_argnums=1)
  for req, used in stats.budgets_for(heads, cfg.num_patches, requested):
    idx = np.asarray(select(jnp.asarray(cls_attn[block - 1][None]), used))[0]
    anchors = (idx[1:] - 1).astype(int)
    selections.append({"requested": req, "budget": used, "num_tokens": int(idx.shape[0]),
                       "anchors": [int(a) for a in anchors],
                       **stats.anchor_overlap(anchors, sel_norms, high, cls_attn[block - 1])})
  proj, explained = stats.pca(hidden[block, 1:])

  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  mean, std = np.asarray(preprocess.CLIP_MEAN), np.asarray(preprocess.CLIP_STD)
  shown = np.clip(pixels * std + mean, 0.0, 1.0)
  labels = [f"layer {d['layer']} (max/med {d['max_over_median']:.1f})" for d in per_layer]
  figs = {
      "norm_maps": figures.layer_maps(
          norms[1:, 1:], grid, out / "norm_maps.png", cmap="inferno", labels=labels,
          title="Token norms per ViT layer"),
      "cls_attention_maps": figures.layer_maps(
          cls_attn.mean(axis=1), grid, out / "cls_attention_maps.png", cmap="viridis",
          labels=[f"layer {i}" for i in range(1, n_layers + 1)],
          title="CLS attention per ViT layer (mean over heads)"),
      "cls_attention_heads": figures.layer_maps(
          cls_attn[block - 1], grid, out / "cls_attention_heads.png", cmap="viridis",
          labels=[f"head {h}" for h in range(heads)],
          title=f"CLS attention per head, layer {block} (anchor selection)"),
      "norm_profile": figures.norm_profile(per_layer, out / "norm_profile.png"),
      "pca": figures.pca_figure(shown, proj, explained, sel_norms, high, grid, block,
                                out / "pca.png"),
      "anchors": figures.anchors_figure(shown, grid, selections, high, out / "anchors.png"),
  }
  summary = {
      "checkpoint": str(checkpoint), "checkpoint_kind": ck.kind, "image": str(image_path),
      "vision": {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "grid": grid,
                 "num_layers": n_layers, "num_heads": heads, "select_layer": cfg.select_layer,
                 "selection_block": block},
      "norm_ratio": norm_ratio,
      "layers": per_layer,
      "selection_layer": {"layer": block, "high_norm_tokens": [int(t) for t in high],
                          "pca_explained_variance": [float(e) for e in explained]},
      "budgets": selections,
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
                pad_to_square=_PAD.value)
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
          f"CLS attention mass {b['cls_attention_mass']:.2f}")
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

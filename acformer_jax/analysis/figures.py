"""Matplotlib figures of the visual-anchor analysis (the paper's motivation figure).

Every function writes one PNG and returns its path. Maps are drawn over the ``g x g``
patch grid (row-major patch order, see ``stats``); the Agg backend is used, so no display
is needed.
"""
from __future__ import annotations

import math
import pathlib
from typing import Dict, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position


def _grid_axes(n: int, max_cols: int = 6, size: float = 2.2):
  cols = min(n, max_cols)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.6), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, list(axes.flat[:n])


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def _square(values: np.ndarray, grid: int) -> np.ndarray:
  return np.asarray(values, np.float64).reshape(grid, grid)


def layer_maps(maps: np.ndarray, grid: int, path, *, title: str, cmap: str,
               labels: Sequence[str]) -> pathlib.Path:
  """One panel per row of ``maps [L, N]``, each with its own colour scale."""
  fig, axes = _grid_axes(len(maps))
  for ax, m, label in zip(axes, maps, labels):
    im = ax.imshow(_square(m, grid), cmap=cmap, interpolation="nearest")
    ax.set_title(label, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
  fig.suptitle(title)
  return _save(fig, path)


def norm_profile(layers: Sequence[Dict], path) -> pathlib.Path:
  """Max/median patch-norm ratio and CLS attention on high-norm tokens per layer."""
  x = [d["layer"] for d in layers]
  fig, ax1 = plt.subplots(figsize=(6, 3.2))
  ax1.plot(x, [d["max_over_median"] for d in layers], "o-", color="tab:red")
  ax1.set_xlabel("ViT layer (block output)")
  ax1.set_ylabel("max / median patch norm", color="tab:red")
  ax2 = ax1.twinx()
  ax2.plot(x, [d["cls_attention_on_high_norm"] for d in layers], "s--", color="tab:blue")
  ax2.set_ylabel("attention rows on high-norm tokens", color="tab:blue")
  ax2.set_ylim(0, 1)
  ax1.set_title("High-norm tokens across layers")
  return _save(fig, path)


def pca_figure(image: np.ndarray, proj: np.ndarray, explained: np.ndarray, norms: np.ndarray,
               high: np.ndarray, grid: int, layer: int, path) -> pathlib.Path:
  """Image | first 3 PCs as RGB over the grid | PC1-PC2 scatter coloured by token norm."""
  fig, axes = plt.subplots(1, 3, figsize=(12, 4))
  axes[0].imshow(image)
  axes[0].set_title("input (preprocessed)")
  rgb = np.zeros((proj.shape[0], 3))
  k = proj.shape[1]
  lo, hi = proj.min(axis=0), proj.max(axis=0)
  rgb[:, :k] = (proj - lo) / np.where(hi > lo, hi - lo, 1.0)
  axes[1].imshow(rgb.reshape(grid, grid, 3), interpolation="nearest")
  axes[1].set_title(f"PCA of patch features, layer {layer}")
  pc2 = proj[:, 1] if k > 1 else np.zeros(proj.shape[0])
  sc = axes[2].scatter(proj[:, 0], pc2, c=norms, cmap="viridis", s=12)
  if len(high):
    axes[2].scatter(proj[high, 0], pc2[high], facecolors="none", edgecolors="red", s=60,
                    label="high-norm")
    axes[2].legend(fontsize=8)
  ev = ", ".join(f"{100 * e:.0f}%" for e in explained[:2])
  axes[2].set_xlabel("PC1")
  axes[2].set_ylabel("PC2")
  axes[2].set_title(f"PC1/PC2 ({ev} of variance)")
  fig.colorbar(sc, ax=axes[2], label="token norm")
  for ax in axes[:2]:
    ax.set_xticks([])
    ax.set_yticks([])
  return _save(fig, path)


def anchors_figure(image: np.ndarray, grid: int, selections: Sequence[Dict], high: np.ndarray,
                   path, source: str = "CLS attention") -> pathlib.Path:
  """The image with each budget's anchors (yellow squares) and high-norm tokens (red x)."""
  fig, axes = plt.subplots(1, len(selections), figsize=(4 * len(selections), 4.3), squeeze=False)
  size = image.shape[0]
  cell = size / grid
  for ax, sel in zip(axes[0], selections):
    ax.imshow(image, extent=(0, size, size, 0))
    for p in sel["anchors"]:
      r, c = divmod(int(p), grid)
      ax.add_patch(plt.Rectangle((c * cell, r * cell), cell, cell, fill=False,
                                 edgecolor="yellow", linewidth=1.2))
    for p in high:
      r, c = divmod(int(p), grid)
      ax.plot((c + 0.5) * cell, (r + 0.5) * cell, "x", color="red", markersize=5)
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"K={sel['budget']}: {sel['num_tokens']} tokens")
  fig.suptitle(f"Anchors from {source} (squares) and high-norm tokens (x)")
  return _save(fig, path)

"""Token statistics for the visual-anchor analysis (pure numpy; ``docs/method.md`` 1.3).

Patch indices are 0-based over the row-major patch grid (patch ``p`` is row ``p // g``,
column ``p % g``, sequence position ``p + 1``). A token is *high-norm* at a layer when its
L2 norm exceeds ``ratio`` times the median patch norm of that layer (the outliers the paper
calls visual anchors).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

PAPER_BUDGETS = (64, 144, 256)
PAPER_PATCHES = 576  # ViT-L/14-336: the paper's budgets are fractions of this grid


def token_norms(hidden: np.ndarray) -> np.ndarray:
  """``[..., T, D] -> [..., T]`` L2 norms in float64."""
  return np.linalg.norm(np.asarray(hidden, np.float64), axis=-1)


def high_norm_tokens(patch_norms: np.ndarray, ratio: float) -> np.ndarray:
  """Patch indices with norm ``> ratio * median``, largest norm first."""
  norms = np.asarray(patch_norms, np.float64)
  idx = np.nonzero(norms > ratio * np.median(norms))[0]
  return idx[np.argsort(-norms[idx], kind="stable")]


def pca(features: np.ndarray, k: int = 3) -> Tuple[np.ndarray, np.ndarray]:
  """Principal components of ``features [N, D]``: ``(projections [N, k], explained ratios [k])``.

  Components are signed so that the largest-magnitude projection is positive (stable
  colours across runs).
  """
  x = np.asarray(features, np.float64)
  x = x - x.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(k, vt.shape[0])
  proj = x @ vt[:k].T
  sign = np.sign(proj[np.argmax(np.abs(proj), axis=0), np.arange(k)])
  proj = proj * np.where(sign == 0, 1.0, sign)
  var = s ** 2
  return proj, var[:k] / max(var.sum(), 1e-30)


def fits(budget: int, num_heads: int, num_patches: int) -> bool:
  """Whether ``select_anchors`` accepts budget K (``1 <= K // H`` and ``H * (K // H) <= N``)."""
  per_head = budget // num_heads
  return per_head >= 1 and num_heads * per_head <= num_patches


def budgets_for(num_heads: int, num_patches: int, requested: Sequence[int] = PAPER_BUDGETS
                ) -> List[Tuple[int, int]]:
  """``[(requested, used)]``: budgets that fit the grid are used as is; others are scaled to
  the same fraction of the grid as on the paper's 24x24 grid, rounded to a multiple of the
  head count and clamped to what fits. Duplicates (after scaling) are dropped."""
  out, seen = [], set()
  max_k = num_heads * (num_patches // num_heads)
  if max_k < num_heads:
    raise ValueError(f"{num_patches} patches cannot hold one anchor per head for {num_heads} heads")
  for k in requested:
    if k < 1:
      raise ValueError(f"anchor budget must be >= 1, got {k}")
    used = k
    if not fits(k, num_heads, num_patches):
      scaled = round(k * num_patches / PAPER_PATCHES / num_heads) * num_heads
      used = int(min(max(scaled, num_heads), max_k))
    if used not in seen:
      seen.add(used)
      out.append((int(k), used))
  return out


def anchor_overlap(anchors: np.ndarray, patch_norms: np.ndarray, high: np.ndarray,
                   cls_attn: np.ndarray) -> Dict[str, float]:
  """How the selected anchors relate to the high-norm tokens of the same layer.

  Args:
    anchors: selected patch indices (CLS excluded).
    patch_norms: ``[N]`` norms of the patch tokens.
    high: high-norm patch indices (:func:`high_norm_tokens`).
    cls_attn: ``[H, N]`` CLS attention of the block whose output is analysed.

  Returns:
    ``high_norm_covered``: fraction of high-norm tokens that are anchors (NaN if none);
    ``anchors_high_norm``: fraction of anchors that are high-norm;
    ``top_norm_overlap``: fraction of anchors among the ``len(anchors)`` largest norms;
    ``random_expectation``: that fraction for a uniformly random selection;
    ``cls_attention_mass``: head-averaged CLS attention mass on the anchors.
  """
  a = set(int(i) for i in anchors)
  n = patch_norms.shape[0]
  top = set(int(i) for i in np.argsort(-patch_norms, kind="stable")[:len(a)])
  hs = set(int(i) for i in high)
  attn = np.asarray(cls_attn, np.float64).mean(axis=0)
  return {
      "num_anchors": len(a),
      "high_norm_covered": (len(a & hs) / len(hs)) if hs else float("nan"),
      "anchors_high_norm": len(a & hs) / max(len(a), 1),
      "top_norm_overlap": len(a & top) / max(len(a), 1),
      "random_expectation": len(a) / n,
      "cls_attention_mass": float(attn[sorted(a)].sum()) if a else 0.0,
  }


def layer_summary(norms: np.ndarray, cls_attn: np.ndarray, ratio: float) -> List[Dict]:
  """Per block ``i = 1..L``: norm statistics, high-norm tokens and their CLS attention.

  Args:
    norms: ``[L+1, N+1]`` token norms (index 0 = embeddings, column 0 = CLS).
    cls_attn: ``[L, H, N]``.
    ratio: the high-norm threshold factor.
  """
  out = []
  for i in range(1, norms.shape[0]):
    patches = norms[i, 1:]
    high = high_norm_tokens(patches, ratio)
    attn = np.asarray(cls_attn[i - 1], np.float64).mean(axis=0)
    med = float(np.median(patches))
    out.append({
        "layer": i,
        "cls_norm": float(norms[i, 0]),
        "patch_norm_median": med,
        "patch_norm_max": float(patches.max()),
        "max_over_median": float(patches.max() / med) if med > 0 else float("inf"),
        "high_norm_tokens": [int(t) for t in high],
        "cls_attention_on_high_norm": float(attn[high].sum()) if high.size else 0.0,
        "cls_attention_top_patch": int(np.argmax(attn)),
    })
  return out

"""All tower layers in one pass: hidden states and anchor-source attention per block.

A tower module returns one selected layer (docs/design.md); the analysis needs every
layer, so it asks the tower registry: ``Tower.all_layers`` (``models/towers.py``) runs the
tower's own embeddings and blocks over the stacked parameters ``layers`` +
``unused_layers`` in one ``lax.scan``. Output ``i`` equals HF ``hidden_states[i]`` (laid out
as the tower's ``features``) and block ``i``'s attention rows (spec ``docs/method.md`` 1.2,
2.8): CLS attention for CLIP / DINOv2, mean attention received for SigLIP, whose pooling
head's probe attention comes as an extra source.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from acformer_jax.config import VisionConfig
from acformer_jax.models import towers


@dataclasses.dataclass(frozen=True)
class Layers:
  """Every block of a tower on a batch (arrays are float32).

  Attributes:
    hidden: ``[L+1, B, N+1, D]``; index 0 = after the embeddings, index ``i`` = block ``i``.
    rows: ``[L, B, H, N]``, block ``i``'s ``row_kind`` attention at index ``i-1``.
    row_kind: ``"cls"`` or ``"received"`` (``Tower.layer_rows``).
    extras: anchor sources that are not per block (``{"probe": [B, H, N]}``).
    used: the source the model's connector ranks (``row_kind`` or a key of ``extras``).
  """
  hidden: jax.Array
  rows: jax.Array
  row_kind: str
  extras: Dict[str, jax.Array]
  used: str


def stacked_blocks(params: Mapping, num_layers: int) -> dict:
  """Per-block parameters of all ``num_layers`` blocks, stacked on a leading axis.

  Raises:
    ValueError: when the tree lacks ``layers`` or holds a different number of blocks.
  """
  if "layers" not in params:
    raise ValueError(f"vision params have no 'layers' subtree (keys: {sorted(params)}); "
                     "expected a vision tower parameter tree (docs/design.md)")
  parts = [params["layers"]] + ([params["unused_layers"]] if "unused_layers" in params else [])
  blocks = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
  have = jax.tree.leaves(blocks)[0].shape[0]
  if have != num_layers:
    raise ValueError(f"vision params hold {have} blocks (layers + unused_layers) but the "
                     f"vision config says num_layers={num_layers}")
  return blocks


@functools.partial(jax.jit, static_argnums=0)
def _run(cfg: VisionConfig, params, blocks, images):
  return towers.tower(cfg.tower).all_layers(cfg, params, blocks, images)


def run_layers(cfg: VisionConfig, params: Mapping, images) -> Layers:
  """Runs every block of ``cfg.tower`` on ``images``.

  Args:
    cfg: the vision config (``select_layer`` only picks ``used``'s block, not what runs).
    params: the unboxed tower params (``vision/`` of the MLLM).
    images: float32 ``[B, S, S, C]`` normalised with the tower's mean/std.
  """
  entry = towers.tower(cfg.tower)
  if entry.all_layers is None:
    raise ValueError(f"vision.tower={cfg.tower!r} registers no all_layers; the analysis "
                     "cannot run it (models/towers.py)")
  images = jnp.asarray(images, jnp.float32)
  s = cfg.image_size
  if images.ndim != 4 or images.shape[1:] != (s, s, cfg.num_channels):
    raise ValueError(f"images must be [B, {s}, {s}, {cfg.num_channels}]; got {images.shape}")
  hidden, rows, extras = _run(cfg, params, stacked_blocks(params, cfg.num_layers), images)
  return Layers(hidden, rows, entry.layer_rows, dict(extras), entry.anchor_used(cfg))


def all_layers(cfg: VisionConfig, params: Mapping, images) -> Tuple[jax.Array, jax.Array]:
  """``(hidden [L+1, B, N+1, D], rows [L, B, H, N])`` of :func:`run_layers`."""
  out = run_layers(cfg, params, images)
  return out.hidden, out.rows

"""The vision-tower registry: one :class:`Tower` per architecture, keyed by ``vision.tower``.

A tower lives in one file (``models/vit.py`` for CLIP, ``models/siglip.py``,
``models/dinov2.py``) that defines its module and registers a :class:`Tower` holding
everything the rest of the code asks about it: the module factory, the HF config mapping
(both directions), the HF key map, the FLOPs, the preprocessing and the anchor source.
Callers ask ``tower(vc.tower).<field>`` and never branch on the name (spec
``docs/seams.md``). Every tower module maps ``pixel_values [B,S,S,C]`` (NHWC, normalised with
``image_mean`` / ``image_std``) to ``(features [B, N+1, D], anchor_attn [B, H, N])``:
token 0 of ``features`` is the tower's summary token (CLS, or what the tower puts in its
place) and ``anchor_attn`` is the per-head score that anchor selection ranks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from acformer_jax.config import VisionConfig
from acformer_jax.data.preprocess import CLIP_MEAN, CLIP_STD  # noqa: F401  (LLaVA-1.5 preprocessing)
from acformer_jax.models.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Tower:
  """One vision tower architecture.

  Attributes:
    name: the ``vision.tower`` value.
    module: ``(VisionConfig, **tower_options) -> nn.Module`` (see the module docstring).
    hf_model_types: the ``config.json`` ``model_type`` values this tower reads.
    from_hf_config: ``(config dict, select_layer) -> VisionConfig``.
    to_hf_config: ``VisionConfig -> config dict`` (the tower's own HF class).
    keymap: ``VisionConfig -> KeyMap`` from un-prefixed HF keys to our paths.
    hf_prefix: ``keys -> str``, the prefix of the tower's keys inside a file.
    flops: ``VisionConfig -> float``, forward FLOPs per image of what runs.
    image_mean / image_std: the normalisation the checkpoint was trained with.
    anchor_source: one line on what ``anchor_attn`` is (docs/connectors.md).
    has_cls: the checkpoint has a CLS token (else token 0 is synthesised).
    validate: ``VisionConfig -> [problems]`` (empty when fine).
    hf_extras: regexes of keys of a bigger file (text tower...) that are not ours.
    hf_architecture: the transformers class name written into exported configs.
    hf_features: ``(VisionConfig, hidden [B,T,D]) -> [B,N+1,D]``: our ``features`` from
      the HF model's ``hidden_states[select_layer]`` (for references and checks).
    all_layers: ``(VisionConfig, params, blocks, images) -> (hidden [L+1,B,N+1,D],
      rows [L,B,H,N], extras {name: [B,H,N]})`` in float32, every block of the checkpoint
      (``blocks``: ``layers`` + ``unused_layers`` stacked): hidden states laid out as
      ``features`` (index 0: after the embeddings), each block's ``layer_rows`` attention and
      anchor sources that are not per block (SigLIP's ``probe``). Used by ``analyze``.
    layer_rows: what ``all_layers``' rows are: ``"cls"`` (the CLS query's attention) or
      ``"received"`` (mean attention each patch receives).
    anchor_used: ``VisionConfig -> str``, the source the connector ranks: ``layer_rows``
      (at the selected block) or a key of the extras.
  """
  name: str
  module: Callable[..., Any]
  hf_model_types: Tuple[str, ...]
  from_hf_config: Callable[[Mapping[str, Any], int], VisionConfig]
  to_hf_config: Callable[[VisionConfig], dict]
  keymap: Callable[[VisionConfig], Any]
  hf_prefix: Callable[[Sequence[str]], str]
  flops: Callable[[VisionConfig], float]
  image_mean: Tuple[float, float, float]
  image_std: Tuple[float, float, float]
  anchor_source: str
  has_cls: bool = True
  validate: Callable[[VisionConfig], List[str]] = lambda vc: []
  hf_extras: Tuple[str, ...] = ()
  hf_architecture: str = ""
  hf_features: Callable[[VisionConfig, Any], Any] = lambda vc, hidden: hidden
  all_layers: Optional[Callable[..., Any]] = None
  layer_rows: str = "cls"
  anchor_used: Callable[[VisionConfig], str] = lambda vc: "cls"


TOWERS: Registry[Tower] = Registry(
    "vision.tower", same=lambda old, new: old.module is new.module,
    missing=lambda name, names: f"vision.tower={name!r} is not a registered tower; "
    f"known: {names}")


def register_tower(entry: Tower, *, replace: bool = False) -> Tower:
  """Adds ``entry`` (a new name, or the same entry again on re-import)."""
  return TOWERS.register(entry.name, entry, replace=replace)


def tower(name: str) -> Tower:
  """The registered tower ``name``; a clear error with the known names otherwise."""
  import acformer_jax.models  # pylint: disable=import-outside-toplevel,unused-import  # registers all
  return TOWERS.get(name)


def tower_names() -> Tuple[str, ...]:
  return TOWERS.names()


def tower_for_hf(config: Mapping[str, Any]) -> Tower:
  """The tower reading an HF vision ``config.json`` dict (by ``model_type``)."""
  import acformer_jax.models  # pylint: disable=import-outside-toplevel,unused-import
  mt = config.get("model_type", "clip_vision_model")
  for t in TOWERS.entries():
    if mt in t.hf_model_types:
      return t
  known = sorted(m for t in TOWERS.entries() for m in t.hf_model_types)
  raise ValueError(f"vision config model_type={mt!r} has no tower; known: {known}")


def validate(vc: VisionConfig) -> List[str]:
  """Problems with ``vc`` (unknown tower, the tower's own checks)."""
  import acformer_jax.models  # pylint: disable=import-outside-toplevel,unused-import  # registers all
  if vc.tower not in TOWERS:
    return [f"model.vision.tower={vc.tower!r} is not one of {tower_names()}"]
  return list(TOWERS.get(vc.tower).validate(vc))


def build(vc: VisionConfig, **options):
  """The tower module for ``vc`` (``options``: ``layers.tower_options``)."""
  return tower(vc.tower).module(vc, **options)


def transformer_block_flops(tokens: int, d: int, f: int) -> float:
  """Forward FLOPs of one pre-LN encoder block on ``tokens`` tokens (full attention)."""
  return 2.0 * tokens * (4 * d * d + 2 * d * f) + 4.0 * tokens * tokens * d


def first_prefix(keys: Sequence[str], marker: str, candidates: Sequence[str]) -> str:
  """The first of ``candidates`` such that ``candidate + marker`` is a key ("" if none)."""
  keys = set(keys)
  return next((c for c in candidates if c + marker in keys), "")

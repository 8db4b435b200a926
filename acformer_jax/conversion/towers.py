"""Load the pretrained towers from transformers checkpoint directories.

``load_hf_vision(dir) -> (VisionConfig, params)`` reads any registered vision tower
(``CLIPVisionModel`` or a full ``CLIPModel``, ``SiglipVisionModel`` / ``SiglipModel``,
``Dinov2Model``; the other tower of a two-tower file is ignored) and ``load_hf_llama(dir) ->
(LLMConfig, params)`` reads an HF causal LM of any registered family (``models/registry.py``).
Spec: ``docs/method.md`` 2.8, 2.9, 3.1, 3.2.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Optional, Tuple

import jax.numpy as jnp

from acformer_jax.config import LLMConfig, VisionConfig
from acformer_jax.conversion.keymaps import KeyMap
from acformer_jax.conversion.sources import TensorSource
from acformer_jax.conversion.streaming import abstract_params, load_params
from acformer_jax.models import registry
from acformer_jax.models.families.decoder_hf import SUPPORTED_ROPE, require, rope_from_hf  # noqa: F401
from acformer_jax.models.towers import tower, tower_for_hf

CLIP_MODEL_EXTRAS = (r"text_model\..*", r"visual_projection\.weight",
                     r"text_projection\.weight", r"logit_scale")


def read_hf_config(directory) -> dict:
  path = pathlib.Path(directory) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found (expected a transformers save_pretrained directory)")
  return json.loads(path.read_text())


_require = require


def vision_config_from_hf(d: Mapping[str, Any], select_layer: int = -2) -> VisionConfig:
  """VisionConfig from a vision tower's ``config.json`` dict; the tower is picked by its
  ``model_type`` (CLIP when absent) from the tower registry."""
  if "model_type" not in d and "vision_config" not in d:
    d = dict(d, model_type="clip_vision_model")
  return tower_for_hf(d).from_hf_config(d, select_layer)


def llm_config_from_hf(d: Mapping[str, Any], family: Optional[str] = None) -> LLMConfig:
  """LLMConfig from an HF causal-LM ``config.json`` dict; the LLM family is detected from
  ``model_type`` (``models/registry.py``) unless ``family`` names it."""
  return registry.llm_config_from_hf(d, family)


def clip_vision_hf_prefix(keys) -> str:
  """``""`` for transformers >= 5 CLIPVisionModel files, ``"vision_model."`` for older
  CLIPVisionModel files and full CLIPModel files."""
  return tower("clip").hf_prefix(keys)


def load_hf_vision(directory, *, select_layer: int = -2, param_dtype="float32",
                   shardings=None) -> Tuple[VisionConfig, dict]:
  """Reads a vision tower directory (CLIP, SigLIP, DINOv2, ...: any registered tower);
  ``params`` match ``tower(cfg.tower).module(cfg)`` (all blocks kept: ``layers`` +
  ``unused_layers``, docs/design.md).

  ``shardings``: ``None``, a ``Mesh`` or a tree of shardings (see ``streaming.load_params``).
  """
  d = read_hf_config(directory)
  cfg = vision_config_from_hf(d, select_layer)
  entry = tower(cfg.tower)
  module = entry.module(cfg, param_dtype=param_dtype)
  abstract = abstract_params(
      module, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32))
  with TensorSource().mount("", directory) as source:
    prefix = entry.hf_prefix(source.keys())
    keymap = entry.keymap(cfg).with_prefix(prefix) + KeyMap((), entry.hf_extras)
    params = load_params(source, keymap, abstract, shardings=shardings,
                         what=f"{cfg.tower} vision checkpoint {directory}")
  return cfg, params


load_hf_clip_vision = load_hf_vision  # the CLIP-era name


def load_hf_llama(directory, *, param_dtype="float32", shardings=None,
                  family: Optional[str] = None) -> Tuple[LLMConfig, dict]:
  """Reads an HF causal LM of any registered family (LLaMA, Qwen2, ...); ``params`` match
  ``registry.decoder(config)``. ``family``: as in :func:`llm_config_from_hf`."""
  cfg = llm_config_from_hf(read_hf_config(directory), family)
  abstract = abstract_params(*llama_init_args(cfg, param_dtype))
  with TensorSource().mount("", directory) as source:
    params = load_params(source, registry.family(cfg.family).keymap(cfg), abstract,
                         shardings=shardings, what=f"{cfg.family} checkpoint {directory}")
  return cfg, params


def llama_init_args(cfg: LLMConfig, param_dtype="float32"):
  """``(module, *init_args)`` for ``abstract_params`` of the decoder of ``cfg.family``."""
  return (registry.decoder(cfg, param_dtype=param_dtype), jnp.zeros((1, 1, cfg.hidden_size)),
          jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))

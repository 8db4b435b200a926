"""Load the pretrained towers from transformers checkpoint directories.

``load_hf_vision(dir) -> (VisionConfig, params)`` reads any registered vision tower
(``CLIPVisionModel`` or a full ``CLIPModel``, ``SiglipVisionModel`` / ``SiglipModel``,
``Dinov2Model``; the other tower of a two-tower file is ignored) and ``load_hf_llama(dir) -> (LLMConfig,
params)`` reads a ``LlamaForCausalLM``. Spec: ``acformer.md`` 2.8, 2.9, 3.1, 3.2.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Optional, Tuple

import jax.numpy as jnp

from acformer_jax.config import LLMConfig, VisionConfig
from acformer_jax.conversion.io import CheckpointReader
from acformer_jax.conversion.keymaps import KeyMap, llama_keymap
from acformer_jax.conversion.loading import abstract_params, load_params
from acformer_jax.models.llama import LlamaModel
from acformer_jax.models.towers import tower, tower_for_hf

CLIP_MODEL_EXTRAS = (r"text_model\..*", r"visual_projection\.weight",
                     r"text_projection\.weight", r"logit_scale")
SUPPORTED_ROPE = ("default", "linear", "llama3")


def read_hf_config(directory) -> dict:
  path = pathlib.Path(directory) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found (expected a transformers save_pretrained directory)")
  return json.loads(path.read_text())


def _require(d: Mapping, key: str, where: str):
  if key not in d:
    raise ValueError(f"{where}: config.json has no field {key!r}")
  return d[key]


def vision_config_from_hf(d: Mapping[str, Any], select_layer: int = -2) -> VisionConfig:
  """VisionConfig from a vision tower's ``config.json`` dict; the tower is picked by its
  ``model_type`` (CLIP when absent) from the tower registry."""
  if "model_type" not in d and "vision_config" not in d:
    d = dict(d, model_type="clip_vision_model")
  return tower_for_hf(d).from_hf_config(d, select_layer)


def rope_from_hf(d: Mapping[str, Any]) -> Tuple[float, Optional[Tuple[Tuple[str, Any], ...]]]:
  """``(rope_theta, rope_scaling)`` from either the transformers >= 5 ``rope_parameters``
  or the older ``rope_theta`` + ``rope_scaling`` fields; scaling as sorted pairs."""
  params = dict(d.get("rope_parameters") or {})
  theta = float(params.pop("rope_theta", d.get("rope_theta", 10000.0)))
  if not params:
    params = dict(d.get("rope_scaling") or {})
  kind = params.pop("rope_type", params.pop("type", "default"))
  if kind not in SUPPORTED_ROPE:
    raise ValueError(f"LLaMA config: rope type {kind!r} is not supported; expected one of "
                     f"{SUPPORTED_ROPE}")
  if kind == "default":
    return theta, None
  needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
  missing = [k for k in needed if k not in params]
  if missing:
    raise ValueError(f"LLaMA config: rope type {kind!r} needs {missing}")
  params["rope_type"] = kind
  return theta, tuple(sorted(params.items()))


def llm_config_from_hf(d: Mapping[str, Any]) -> LLMConfig:
  """LLMConfig from a LlamaForCausalLM ``config.json`` dict."""
  w = "LLaMA config"
  if d.get("model_type", "llama") != "llama":
    raise ValueError(f"{w}: model_type={d.get('model_type')!r}, expected 'llama'")
  for flag in ("attention_bias", "mlp_bias"):
    if d.get(flag):
      raise ValueError(f"{w}: {flag}=true is not supported (LLaMA/Vicuna have no biases)")
  if d.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{w}: hidden_act={d.get('hidden_act')!r}, only 'silu' is supported")
  theta, scaling = rope_from_hf(d)
  heads = int(_require(d, "num_attention_heads", w))

  def first(v, default):
    v = v[0] if isinstance(v, (list, tuple)) and v else v
    return default if v is None else int(v)

  return LLMConfig(
      vocab_size=int(_require(d, "vocab_size", w)), hidden_size=int(_require(d, "hidden_size", w)),
      intermediate_size=int(_require(d, "intermediate_size", w)),
      num_layers=int(_require(d, "num_hidden_layers", w)), num_heads=heads,
      num_kv_heads=int(d.get("num_key_value_heads") or heads),
      head_dim=d.get("head_dim"), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      rope_theta=theta, rope_scaling=scaling,
      max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      bos_token_id=first(d.get("bos_token_id"), 1), eos_token_id=first(d.get("eos_token_id"), 2),
      pad_token_id=first(d.get("pad_token_id"), 0))


def clip_vision_hf_prefix(keys) -> str:
  """``""`` for transformers >= 5 CLIPVisionModel files, ``"vision_model."`` for older
  CLIPVisionModel files and full CLIPModel files."""
  return tower("clip").hf_prefix(keys)


def load_hf_vision(directory, *, select_layer: int = -2, param_dtype="float32",
                   shardings=None) -> Tuple[VisionConfig, dict]:
  """Reads a vision tower directory (CLIP, SigLIP, DINOv2, ...: any registered tower);
  ``params`` match ``tower(cfg.tower).module(cfg)`` (all blocks kept: ``layers`` +
  ``unused_layers``, docs/design.md).

  ``shardings``: ``None``, a ``Mesh`` or a tree of shardings (see ``loading.load_params``).
  """
  d = read_hf_config(directory)
  cfg = vision_config_from_hf(d, select_layer)
  entry = tower(cfg.tower)
  module = entry.module(cfg, param_dtype=param_dtype)
  abstract = abstract_params(
      module, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32))
  with CheckpointReader(directory) as reader:
    prefix = entry.hf_prefix(reader.keys())
    keymap = entry.keymap(cfg).with_prefix(prefix) + KeyMap((), entry.hf_extras)
    params = load_params(reader, keymap, abstract, shardings=shardings,
                         what=f"{cfg.tower} vision checkpoint {directory}")
  return cfg, params


load_hf_clip_vision = load_hf_vision  # the CLIP-era name


def load_hf_llama(directory, *, param_dtype="float32", shardings=None) -> Tuple[LLMConfig, dict]:
  """Reads a LlamaForCausalLM; ``params`` match ``LlamaModel(config)``."""
  cfg = llm_config_from_hf(read_hf_config(directory))
  abstract = abstract_params(*llama_init_args(cfg, param_dtype))
  with CheckpointReader(directory) as reader:
    params = load_params(reader, llama_keymap(cfg.num_layers, cfg.tie_word_embeddings), abstract,
                         shardings=shardings, what=f"LLaMA checkpoint {directory}")
  return cfg, params


def llama_init_args(cfg: LLMConfig, param_dtype="float32"):
  """``(module, *init_args)`` for ``abstract_params`` of a LlamaModel."""
  return (LlamaModel(cfg, param_dtype=param_dtype), jnp.zeros((1, 1, cfg.hidden_size)),
          jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))

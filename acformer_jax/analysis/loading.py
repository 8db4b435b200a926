"""The vision tower of a checkpoint directory, for the analysis.

Accepted layouts:
  * a params directory (``model_config.json`` + Orbax ``params/``, see
    ``acformer_jax.params_store``): only the ``vision`` subtree is restored (partial
    restore), so a 7B checkpoint does not need the LLM in memory;
  * a transformers vision-tower directory of any registered tower (``CLIPVisionModel``,
    ``SiglipVisionModel``, ``Dinov2Model``..., by ``config.json`` ``model_type``) or a
    ``LlavaForConditionalGeneration`` directory, converted on the fly by
    ``acformer_jax.conversion``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax import params_store
from acformer_jax.models import towers


@dataclasses.dataclass
class VisionCheckpoint:
  config: config_lib.VisionConfig
  params: Any
  kind: str                       # "mllm" | "hf_llava" | "hf_<tower>" (hf_clip, hf_dinov2...)
  connector: Optional[config_lib.ConnectorConfig] = None


def _restore_vision(directory: pathlib.Path, cfg: config_lib.VisionConfig, param_dtype: str):
  s = cfg.image_size
  boxed = params_store.abstract_params(towers.build(cfg, param_dtype=param_dtype),
                                       jnp.zeros((1, s, s, cfg.num_channels)))
  try:
    return params_store.restore(directory, params_store.sharded_abstract(boxed), ("vision",))
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(f"{directory / params_store.PARAMS_DIR}: could not restore the 'vision' "
                     f"params described by its {params_store.CONFIG_FILE} "
                     f"({type(e).__name__}: {str(e)[:400]})") from None


def load_vision(directory, *, select_layer: Optional[int] = None) -> VisionCheckpoint:
  """Vision config + params from ``directory`` (layouts in the module docstring).

  Args:
    directory: checkpoint directory.
    select_layer: overrides the config's ``select_layer`` (the layer whose CLS attention
      selects the anchors); ``None`` keeps the checkpoint's (LLaVA: -2).
  """
  d = pathlib.Path(directory)
  if not d.is_dir():
    raise FileNotFoundError(f"checkpoint directory {d} does not exist")
  if (d / params_store.CONFIG_FILE).is_file():
    mc = params_store.read_model_config(d)
    cfg = mc.vision
    if not (d / params_store.PARAMS_DIR).is_dir():
      raise FileNotFoundError(f"{d / params_store.PARAMS_DIR} not found: expected the Orbax params item "
                              f"next to {params_store.CONFIG_FILE}")
    params = _restore_vision(d, cfg, mc.param_dtype)
    out = VisionCheckpoint(cfg, params, "mllm", mc.connector)
  elif (d / "config.json").is_file():
    from acformer_jax.conversion.towers import load_hf_vision  # pylint: disable=import-outside-toplevel
    raw = json.loads((d / "config.json").read_text())
    kind = raw.get("model_type")
    if kind == "llava":
      from acformer_jax.conversion.pretrained import load_pretrained  # pylint: disable=import-outside-toplevel
      model, params = load_pretrained(d)
      out = VisionCheckpoint(model.config.vision, params["vision"], "hf_llava",
                             model.config.connector)
    else:
      try:
        entry = towers.tower_for_hf(raw)
      except ValueError as e:
        raise ValueError(f"{d / 'config.json'}: model_type={kind!r}; the analysis reads "
                         "transformers vision-tower directories of a registered tower, 'llava' "
                         f"directories or acformer_jax checkpoints ({params_store.CONFIG_FILE} + "
                         f"{params_store.PARAMS_DIR}/) ({e})") from None
      cfg, params = load_hf_vision(d, select_layer=-2 if select_layer is None else select_layer)
      out = VisionCheckpoint(cfg, params, f"hf_{entry.name}")
  else:
    raise FileNotFoundError(f"{d} holds neither {params_store.CONFIG_FILE} (acformer_jax checkpoint) "
                            "nor config.json (transformers directory)")
  if select_layer is not None:
    out.config = dataclasses.replace(out.config, select_layer=select_layer)
    _ = out.config.num_computed_layers  # validates
  return out


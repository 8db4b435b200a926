"""transformers ``LlavaForConditionalGeneration`` checkpoints, both directions.

Spec: ``docs/method.md`` 2.9 (HF Llava key layouts and config defaults, the converter's
added ``<image>`` / ``<pad>`` vocabulary rows) and 2.8 (``vision_feature_layer``,
``vision_feature_select_strategy``).

Key layouts, as (language body, head, vision tower, projector) prefixes:

* ``legacy``: ``language_model.model.``, ``language_model.lm_head``,
  ``vision_tower.vision_model.``, ``multi_modal_projector.``;
* ``transformers5``: as legacy but the tower is ``vision_tower.`` (no ``vision_model.``);
* ``current``: ``model.language_model.``, ``lm_head``, ``model.vision_tower.vision_model.``,
  ``model.multi_modal_projector.``.

``legacy`` is what the original converter and older hub repos store, ``transformers5``
what ``save_pretrained`` writes with transformers 5, ``current`` the in-memory names
of transformers >= 4.52 (saved by 4.52-4.5x). Every one loads with ``from_pretrained``.
All vocabulary rows are kept (32064 for llava-hf: ``<image>`` = 32000, ``<pad>`` = 32001).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from acformer_jax import config as config_lib
from acformer_jax import params_store
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.conversion import towers
from acformer_jax.conversion.sources import TensorSource
from acformer_jax.models import registry
from acformer_jax.models.towers import tower

LAYOUTS: Dict[str, Tuple[str, str, str, str]] = {
    "legacy": ("language_model.model.", "language_model.lm_head.weight",
               "vision_tower.vision_model.", "multi_modal_projector."),
    "transformers5": ("language_model.model.", "language_model.lm_head.weight",
                      "vision_tower.", "multi_modal_projector."),
    "current": ("model.language_model.", "lm_head.weight",
                "model.vision_tower.vision_model.", "model.multi_modal_projector."),
}
_VISION_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.",
                    "model.vision_tower.", "vision_tower.")


def detect_layout(keys) -> Tuple[str, str, str, str]:
  """``(body, head, vision, projector)`` prefixes of a saved Llava state dict."""
  keys = set(keys)
  if any(k.startswith("model.language_model.") for k in keys):
    body, head = "model.language_model.", "lm_head.weight"
  else:
    body, head = "language_model.model.", "language_model.lm_head.weight"
  vision = next((p for p in _VISION_PREFIXES if f"{p}embeddings.patch_embedding.weight" in keys),
                LAYOUTS["legacy"][2])
  proj = next((p for p in ("model.multi_modal_projector.", "multi_modal_projector.")
               if f"{p}linear_1.weight" in keys), "multi_modal_projector.")
  return body, head, vision, proj


def layout_name(prefixes) -> Optional[str]:
  return next((n for n, p in LAYOUTS.items() if tuple(p) == tuple(prefixes)), None)


def model_config_from_hf_llava(d: dict, problems: list) -> config_lib.ModelConfig:
  """``ModelConfig`` from a LlavaConfig dict; unsupported settings become ``problems``."""
  w = "config.json"
  layer = d.get("vision_feature_layer", -2)
  if not isinstance(layer, int):
    problems.append(f"{w}: vision_feature_layer={layer!r}; only a single layer is supported")
    layer = -2
  vision = towers.vision_config_from_hf(d.get("vision_config") or {}, select_layer=layer)
  strategy = d.get("vision_feature_select_strategy", "default")
  want = select_strategy(vision)
  if strategy != want:
    why = "drop CLS, LLaVA-1.5" if want == "default" else "keep every token: no CLS"
    problems.append(f"{w}: vision_feature_select_strategy={strategy!r}; only {want!r} ({why}) "
                    f"is supported with the {vision.tower} tower")
  if d.get("projector_hidden_act", "gelu") != "gelu":
    problems.append(f"{w}: projector_hidden_act={d.get('projector_hidden_act')!r}, expected 'gelu'")
  if not d.get("multimodal_projector_bias", True):
    problems.append(f"{w}: multimodal_projector_bias=false is not supported")
  text = dict(d.get("text_config") or {})
  text.setdefault("model_type", "llama")
  if text.get("pad_token_id") is None and d.get("pad_token_id") is not None:
    text["pad_token_id"] = d["pad_token_id"]
  llm = towers.llm_config_from_hf(text)
  seq = d.get("image_seq_length")
  if seq is not None and seq != vision.num_patches:
    problems.append(f"{w}: image_seq_length={seq} but the vision tower has "
                    f"{vision.num_patches} patches")
  image_id = int(d.get("image_token_index", d.get("image_token_id", 32000)))
  return config_lib.ModelConfig(vision=vision, llm=llm, image_token_id=image_id,
                                connector=config_lib.ConnectorConfig(type="mlp2x_gelu"))


def plan(input_dir, vision=None, llm=None, **_) -> plan_lib.Plan:
  if vision or llm:
    plan_lib.fail("hf-llava input", ["--vision / --llm do not apply: a Llava directory holds "
                                     "both towers"])
  d = plan_lib.read_json(f"{input_dir}/config.json", "a LlavaForConditionalGeneration directory")
  if d.get("model_type") != "llava":
    raise ValueError(f"{input_dir}/config.json: model_type={d.get('model_type')!r}, expected "
                     "'llava' (a transformers LlavaForConditionalGeneration directory)")
  problems = []
  cfg = model_config_from_hf_llava(d, problems)
  source = TensorSource().mount("", input_dir)
  body, head, vprefix, proj = detect_layout(source.keys())
  keymap = (plan_lib.vision_keymap(cfg.vision, vprefix, full_clip=False)
            + plan_lib.mlp_projector_keymap((proj + "linear_1", proj + "linear_2"))
            + plan_lib.llm_keymap(cfg.llm, body, head))
  return plan_lib.Plan(
      format="hf-llava", config=cfg, source=source, keymap=keymap,
      tokenizer_dir=params_store.find_tokenizer(input_dir), problems=problems,
      info={"source_config": d, "layout": [body, head, vprefix, proj],
            "source_dtype": plan_lib.source_dtype(d)},
      reference={"kind": "hf-llava", "dir": str(input_dir)},
      declared_dtypes={"": plan_lib.source_dtype(d)})


# --- export ---------------------------------------------------------------------------
def text_config_dict(lc: config_lib.LLMConfig) -> dict:
  """The HF causal-LM config dict of ``lc`` (its family's ``to_hf``)."""
  return registry.family(lc.family).to_hf(lc)


def select_strategy(vc: config_lib.VisionConfig) -> str:
  """The Llava ``vision_feature_select_strategy`` giving all patches: ``default`` drops a
  CLS token, ``full`` keeps every token (towers without CLS, e.g. SigLIP)."""
  return "default" if tower(vc.tower).has_cls else "full"


def clip_config_dict(vc: config_lib.VisionConfig) -> dict:
  """The tower's HF vision config (named for CLIP, the first tower)."""
  return tower(vc.tower).to_hf_config(vc)


def export_config(mc: config_lib.ModelConfig, dtype: str, base: Optional[dict] = None) -> dict:
  """A LlavaConfig dict for ``mc`` (fields of ``base``, the source config, kept otherwise)."""
  if mc.connector.type != "mlp2x_gelu":
    raise ValueError(f"hf-llava export needs connector.type='mlp2x_gelu' (LLaVA-1.5); this "
                     f"model has {mc.connector.type!r}: use --format acformer or llava")
  if mc.image_token_id >= mc.llm.vocab_size:
    raise ValueError(
        f"hf-llava export: image_token_id={mc.image_token_id} is outside the vocabulary "
        f"({mc.llm.vocab_size} rows); LlavaForConditionalGeneration embeds the image token, so "
        "the vocabulary needs an <image> row (convert from an hf-llava checkpoint)")
  d = dict(base or {})
  text = dict(d.get("text_config") or {})
  text.pop("rope_parameters", None)
  text.update(text_config_dict(mc.llm))
  text.pop("architectures", None)
  vision = dict(d.get("vision_config") or {})
  vision.update(clip_config_dict(mc.vision))
  d.update({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "image_token_index": mc.image_token_id, "projector_hidden_act": "gelu",
            "vision_feature_layer": mc.vision.select_layer,
            "vision_feature_select_strategy": select_strategy(mc.vision),
            "image_seq_length": mc.vision.num_patches, "multimodal_projector_bias": True,
            "tie_word_embeddings": mc.llm.tie_word_embeddings, "text_config": text,
            "vision_config": vision, "dtype": dtype})
  d.pop("torch_dtype", None)
  return d


def export_keymap(mc: config_lib.ModelConfig, layout) -> "plan_lib.KeyMap":
  body, head, vprefix, proj = layout
  return (plan_lib.vision_keymap(mc.vision, vprefix, full_clip=False)
          + plan_lib.mlp_projector_keymap((proj + "linear_1", proj + "linear_2"))
          + plan_lib.llm_keymap(mc.llm, body, head))

"""Original LLaVA-1.5 and AcFormer checkpoints, and stage-1 ``mm_projector.bin`` files.

Spec: ``docs/method.md`` 2.9 (``LlavaLlamaForCausalLM`` keys: ``model.layers.*``,
``lm_head``, ``model.mm_projector.0/2``; config fields ``mm_*``), 1.5 (the AcFormer
projector: ``model.mm_projector.0.*`` = resampler, ``.1`` / ``.3`` = the MLP), 1.6
(stage 1 trains the whole ``mm_projector``, so its ``mm_projector.bin`` carries the
resampler) and 1.1 (the released code hard-codes K = 256).

The released checkpoints do not contain the CLIP tower: it comes from ``--vision``
(e.g. ``openai/clip-vit-large-patch14-336``), mounted under ``vision:``; a tower stored
inside the checkpoint (``model.vision_tower.vision_tower.vision_model.*``) is used
instead when present. AcFormer resampler sizes come from the optional config fields
``acformer_num_queries`` (default 256), ``acformer_resampler_heads`` (8),
``acformer_resampler_dim_head`` (64), ``acformer_resampler_ff_mult`` (4) and
``acformer_resampler_depth`` (default: counted from the tensors).
"""
from __future__ import annotations

import json
import pathlib
from typing import List, Optional

from acformer_jax import config as config_lib
from acformer_jax import params_store
from acformer_jax.conversion import hf_llava
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.conversion import towers
from acformer_jax.conversion.sources import TensorSource, has_weights

EMBEDDED_VISION = "model.vision_tower.vision_tower."
PROJ = "model.mm_projector."
ACFORMER_FIELDS = {"num_queries": ("acformer_num_queries", 256),
                   "heads": ("acformer_resampler_heads", 8),
                   "dim_head": ("acformer_resampler_dim_head", 64),
                   "ff_mult": ("acformer_resampler_ff_mult", 4)}


def _connector_keymap(kind: str, prefix: str, depth: int = 0):
  if kind == "linear":
    return plan_lib.mlp_projector_keymap((prefix[:-1],))
  if kind == "mlp2x_gelu":
    return plan_lib.mlp_projector_keymap((prefix + "0", prefix + "2"))
  return (plan_lib.resampler_keymap(prefix + "0.", depth)
          + plan_lib.mlp_projector_keymap((prefix + "1", prefix + "3")))


def acformer_connector(d: dict, keys, prefix: str, problems: List[str],
                       overrides: Optional[dict] = None) -> config_lib.ConnectorConfig:
  """ConnectorConfig of an official AcFormer projector (config fields + tensor count)."""
  counted = plan_lib.count_layers(keys, rf"^{prefix.replace('.', '[.]')}0[.]layers[.](\d+)[.]")
  kw = {name: int(d.get(field, default)) for name, (field, default) in ACFORMER_FIELDS.items()}
  depth = d.get("acformer_resampler_depth")
  if depth is not None and int(depth) != counted:
    problems.append(f"config.json: acformer_resampler_depth={depth} but the checkpoint holds "
                    f"{counted} resampler layers ({prefix}0.layers.*)")
  kw.update(overrides or {})
  return config_lib.ConnectorConfig(type="acformer", depth=counted, **kw)


def _llava_connector_kind(d: dict, problems: List[str]) -> str:
  kind = d.get("mm_projector_type", "linear")
  if kind not in ("linear", "mlp2x_gelu"):
    problems.append(f"config.json: mm_projector_type={kind!r}; supported: linear, mlp2x_gelu")
    kind = "mlp2x_gelu"
  return kind


def _check_llava_fields(d: dict, acformer: bool, problems: List[str]) -> None:
  for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
    if d.get(flag):
      problems.append(f"config.json: {flag}=true is not supported (LLaVA-1.5 sets it false)")
  feature = d.get("mm_vision_select_feature", "patch")
  if not acformer and feature != "patch":
    problems.append(f"config.json: mm_vision_select_feature={feature!r}; only 'patch' (drop "
                    "CLS) is supported")


def _vision(vision, main: TensorSource, select_layer: int, problems, flag="--vision"):
  """Mounts the CLIP tower; returns ``(VisionConfig, hf prefix, vision config dict)``."""
  if vision is None:
    raise ValueError(f"{flag} is required: the CLIP vision tower directory (LLaVA releases "
                     "do not include it; e.g. openai/clip-vit-large-patch14-336)")
  vd = towers.read_hf_config(vision)
  vc = towers.vision_config_from_hf(vd, select_layer=select_layer)
  embedded = [k for k in main.keys("") if k.startswith(EMBEDDED_VISION + "vision_model.")]
  if embedded:
    return vc, EMBEDDED_VISION + "vision_model.", vd
  if not has_weights(vision):
    raise FileNotFoundError(f"{flag} {vision}: no weights found (expected model.safetensors, "
                            "pytorch_model.bin or their sharded index)")
  main.mount("vision:", vision)
  return vc, "vision:" + plan_lib.clip_prefix(main, "vision:", vc), vd


def _check_width(d: dict, vc: config_lib.VisionConfig, problems: List[str]):
  mm = d.get("mm_hidden_size")
  if mm is not None and int(mm) != vc.hidden_size:
    problems.append(f"config.json: mm_hidden_size={mm} but the vision tower's hidden_size is "
                    f"{vc.hidden_size}")


def _plan_full(fmt: str, input_dir, vision, llm, num_queries=None, **_) -> plan_lib.Plan:
  if llm:
    plan_lib.fail(f"{fmt} input", ["--llm does not apply: the checkpoint holds the LLM"])
  d = plan_lib.read_json(f"{input_dir}/config.json", f"an original {fmt} checkpoint directory")
  problems = []
  acformer = fmt == "acformer"
  _check_llava_fields(d, acformer, problems)
  llm_cfg = towers.llm_config_from_hf(dict(d, model_type="llama"))
  source = TensorSource().mount("", input_dir)
  vc, vprefix, vd = _vision(vision, source, int(d.get("mm_vision_select_layer", -2)), problems)
  _check_width(d, vc, problems)
  keys = source.keys("")
  if acformer:
    kind = "acformer"
    if d.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
      problems.append(f"config.json: mm_projector_type={d.get('mm_projector_type')!r}; the "
                      "AcFormer projector is the resampler + mlp2x_gelu")
    stored = d.get("acformer_num_queries")
    if num_queries is not None and stored is not None and int(stored) != num_queries:
      problems.append(f"--num_queries={num_queries} but config.json has acformer_num_queries="
                      f"{stored}")
    conn = acformer_connector(d, keys, PROJ, problems,
                              overrides={"num_queries": num_queries} if num_queries else None)
    if stored is None and num_queries is None:
      problems.append("config.json has no acformer_num_queries (the official configs omit it "
                      "at K=144 and the code default is 256): pass --num_queries K")
  else:
    kind = _llava_connector_kind(d, problems)
    conn = config_lib.ConnectorConfig(type=kind)
    if any(k.startswith(PROJ + "0.layers.") for k in keys):
      problems.append("the checkpoint holds an AcFormer resampler (model.mm_projector.0.layers.*):"
                      " use --format acformer")
  cfg = config_lib.ModelConfig(vision=vc, llm=llm_cfg, connector=conn,
                               image_token_id=llm_cfg.vocab_size)
  keymap = (plan_lib.vision_keymap(cfg.vision, vprefix)
            + _connector_keymap(kind, PROJ, conn.depth)
            + plan_lib.llm_keymap(cfg.llm, "model.", "lm_head.weight"))
  extras = {}
  if acformer and PROJ + "0.latents" in keys:
    extras["resampler_latents"] = PROJ + "0.latents"
  keymap = keymap + plan_lib.KeyMap((), (r"model\.mm_projector\.0\.latents",))
  info = {"source_config": d, "vision_config": vd, "vision_prefix": vprefix.split(":")[-1],
          "source_dtype": plan_lib.source_dtype(d), "vision_dtype": plan_lib.source_dtype(vd)}
  return plan_lib.Plan(
      format=fmt, config=cfg, source=source, keymap=keymap, extras=extras, problems=problems,
      tokenizer_dir=params_store.find_tokenizer(input_dir), info=info,
      reference={"kind": "composed", "vision_prefix": vprefix, "llm_prefix": "",
                 "connector_prefix": PROJ},
      declared_dtypes={"": info["source_dtype"], "vision:": info["vision_dtype"]})


def plan_llava(input_dir, vision=None, llm=None, **kw) -> plan_lib.Plan:
  return _plan_full("llava", input_dir, vision, llm, **kw)


def plan_acformer(input_dir, vision=None, llm=None, **kw) -> plan_lib.Plan:
  return _plan_full("acformer", input_dir, vision, llm, **kw)


def _projector_file(path) -> pathlib.Path:
  p = pathlib.Path(path)
  if p.is_dir():
    found = [p / n for n in ("mm_projector.bin", "mm_projector.safetensors") if (p / n).is_file()]
    if not found:
      raise FileNotFoundError(f"{p}: no mm_projector.bin (a LLaVA stage-1 output directory "
                              "holds one)")
    return found[0]
  if not p.is_file():
    raise FileNotFoundError(f"{p} does not exist (expected a stage-1 mm_projector.bin)")
  return p


def plan_stage1(input_path, vision=None, llm=None, connector=None, select_layer=-2,
                **_) -> plan_lib.Plan:
  """A stage-1 projector + the two pretrained towers = a stage-2 starting point."""
  if llm is None:
    raise ValueError("--llm is required for llava-stage1: the LLaMA/Vicuna directory the "
                     "stage-1 run used (stage 2 starts from it)")
  proj_file = _projector_file(input_path)
  cfg_file = proj_file.parent / "config.json"
  d = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
  problems = []
  source = TensorSource().mount("", proj_file)
  keys = source.keys("")
  prefix = PROJ if any(k.startswith(PROJ) for k in keys) else "mm_projector."
  if not any(k.startswith(prefix) for k in keys):
    plan_lib.fail(f"stage-1 projector {proj_file}", [
        f"no model.mm_projector.* / mm_projector.* tensors; found {keys[:10]}"])
  if any(k.startswith(prefix + "0.layers.") for k in keys):
    kind = "acformer"
    overrides = {k: v for k, v in (connector or {}).items() if k != "type"}
    conn = acformer_connector(d, keys, prefix, problems, overrides=overrides)
  else:
    kind = "mlp2x_gelu" if prefix + "2.weight" in keys else "linear"
    conn = config_lib.ConnectorConfig(type=kind)
  select_layer = int(d.get("mm_vision_select_layer", select_layer))
  vc, vprefix, vd = _vision(vision, source, select_layer, problems)
  _check_width(d, vc, problems)
  source.mount("llm:", llm)
  ld = towers.read_hf_config(llm)
  llm_cfg = towers.llm_config_from_hf(ld)
  cfg = config_lib.ModelConfig(vision=vc, llm=llm_cfg, connector=conn,
                               image_token_id=llm_cfg.vocab_size)
  keymap = (plan_lib.vision_keymap(vc, vprefix) + _connector_keymap(kind, prefix, conn.depth)
            + plan_lib.llm_keymap(llm_cfg, "llm:model.", "llm:lm_head.weight")
            + plan_lib.KeyMap((), (rf"{prefix.replace('.', '[.]')}0[.]latents",)))
  extras = {"resampler_latents": prefix + "0.latents"} if prefix + "0.latents" in keys else {}
  info = {"vision_config": vd, "llm_config": ld, "vision_prefix": vprefix.split(":")[-1],
          "source_dtype": plan_lib.source_dtype(ld), "vision_dtype": plan_lib.source_dtype(vd),
          "stage1_config": d}
  return plan_lib.Plan(
      format="llava-stage1", config=cfg, source=source, keymap=keymap, extras=extras,
      problems=problems, tokenizer_dir=params_store.find_tokenizer(llm), info=info,
      reference={"kind": "composed", "vision_prefix": vprefix, "llm_prefix": "llm:",
                 "connector_prefix": prefix},
      declared_dtypes={"vision:": info["vision_dtype"], "llm:": info["source_dtype"]})


# --- export ---------------------------------------------------------------------------
def export_config(mc: config_lib.ModelConfig, fmt: str, dtype: str, vision_path: str,
                  base: Optional[dict] = None) -> dict:
  """An original-LLaVA config dict (``LlavaLlamaForCausalLM``) for ``mc``."""
  kind = mc.connector.type
  allowed = ("acformer",) if fmt == "acformer" else ("linear", "mlp2x_gelu")
  if kind not in allowed:
    raise ValueError(f"{fmt} export needs connector.type in {allowed}; this model has {kind!r}")
  d = dict(base or {})
  d.pop("rope_parameters", None)
  d.update(hf_llava.text_config_dict(mc.llm))
  d.update({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
            "mm_vision_tower": vision_path, "mm_hidden_size": mc.vision.hidden_size,
            "mm_projector_type": "linear" if kind == "linear" else "mlp2x_gelu",
            "mm_vision_select_layer": mc.vision.select_layer, "torch_dtype": dtype})
  for k, v in (("mm_vision_select_feature", "patch"), ("mm_use_im_start_end", False),
               ("mm_use_im_patch_token", False), ("image_aspect_ratio", "pad"),
               ("use_mm_proj", True)):
    d.setdefault(k, v)
  if kind == "acformer":
    c = mc.connector
    d.update({field: getattr(c, name) for name, (field, _) in ACFORMER_FIELDS.items()})
    d["acformer_resampler_depth"] = c.depth
  return d


def export_keymap(mc: config_lib.ModelConfig):
  """Main checkpoint keys (LLM + projector); the tower goes to ``vision_tower/``."""
  c = mc.connector
  return (_connector_keymap(c.type, PROJ, c.depth)
          + plan_lib.llm_keymap(mc.llm, "model.", "lm_head.weight"))


def latents_shape(mc: config_lib.ModelConfig):
  """Shape of the official resampler's unused ``latents`` (docs/method.md 1.4: 144 x dim)."""
  return (144, mc.vision.hidden_size)

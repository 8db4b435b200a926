"""The input formats of ``acformer_jax.convert`` and their planners.

Spec: ``docs/method.md`` 2.9 and 1.5; ``docs/jax_practices.md`` item 12 (load the two towers
from separate pretrained sources).

=============  =================================================  ======================
format         ``--input``                                        also
=============  =================================================  ======================
hf-llava       ``LlavaForConditionalGeneration`` directory        (both towers inside)
llava          original LLaVA-1.5 directory (LLM + mm_projector)  ``--vision`` CLIP dir
acformer       official AcFormer directory (resampler + MLP)      ``--vision`` CLIP dir
llava-stage1   stage-1 ``mm_projector.bin`` (file or its dir)     ``--vision``, ``--llm``
hf-clip        ``CLIPVisionModel`` / ``CLIPModel`` directory      ``--llm`` LLaMA dir
hf-<family>    HF causal LM of a registered LLM family            ``--vision`` CLIP dir
               (``hf-llama``: Vicuna, LLaMA-2; ``hf-llama3``,
               ``hf-qwen2``, ``hf-mistral``, ``hf-gemma``, ...)
=============  =================================================  ======================

Every plan describes a complete ``MultimodalLM``; with ``hf-clip`` / ``hf-<family>`` the
connector is new (``--connector``, initialised at conversion), giving a stage-1
starting point built from pretrained towers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

from acformer_jax import config as config_lib
from acformer_jax import params_store
from acformer_jax.conversion import hf_llava, llava
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.conversion import towers
from acformer_jax.conversion.sources import TensorSource, has_weights
from acformer_jax.models import registry

LLM_FORMAT_PREFIX = "hf-"


def llm_format_family(fmt: str):
  """The family name of an ``hf-<family>`` format (None for any other format)."""
  name = fmt[len(LLM_FORMAT_PREFIX):] if fmt.startswith(LLM_FORMAT_PREFIX) else None
  return name if name in registry.FAMILIES else None


def format_names():
  """Every input format, ``hf-<family>`` for each registered family included."""
  return tuple(FORMATS) + tuple(LLM_FORMAT_PREFIX + n for n in registry.FAMILIES.names()
                                if LLM_FORMAT_PREFIX + n not in FORMATS)
from acformer_jax.models import connectors
from acformer_jax.models import towers as towers_lib


def _plan_towers(fmt: str, input_path, vision=None, llm=None, connector=None,
                 select_layer: int = -2, **_) -> plan_lib.Plan:
  vision_dir, llm_dir = (input_path, llm) if fmt == "hf-clip" else (vision, input_path)
  family = llm_format_family(fmt)  # None for hf-clip: detected from the --llm config
  other = "--llm (the LLM directory)" if fmt == "hf-clip" else \
      "--vision (the CLIP vision tower directory)"
  if (llm if fmt == "hf-clip" else vision) is None:
    raise ValueError(f"{fmt}: {other} is required; the output is a complete model whose "
                     "connector is initialised fresh (--connector)")
  if fmt == "hf-clip" and vision or fmt != "hf-clip" and llm:
    raise ValueError(f"{fmt}: --input already gives the "
                     f"{'vision tower' if fmt == 'hf-clip' else 'LLM'}")
  for p, what in ((vision_dir, "CLIP"), (llm_dir, "LLM")):
    if not has_weights(p):
      raise FileNotFoundError(f"{p}: no {what} weights found (expected model.safetensors, "
                              "pytorch_model.bin or their sharded index)")
  vd, ld = towers.read_hf_config(vision_dir), towers.read_hf_config(llm_dir)
  vc = towers.vision_config_from_hf(vd, select_layer=select_layer)
  lc = towers.llm_config_from_hf(ld, family)
  fields = [f.name for f in dataclasses.fields(config_lib.ConnectorConfig)]
  unknown = sorted(set(connector or {}) - set(fields))
  if unknown:
    raise ValueError(f"--connector: unknown field(s) {unknown}; expected some of {fields}")
  conn = config_lib.ConnectorConfig(**(connector or {}))
  cfg = config_lib.ModelConfig(vision=vc, llm=lc, connector=conn, image_token_id=lc.vocab_size)
  config_lib.num_visual_tokens(cfg)  # validates connector.type
  source = TensorSource().mount("vision:", vision_dir).mount("llm:", llm_dir)
  vprefix = "vision:" + plan_lib.clip_prefix(source, "vision:")
  keymap = (plan_lib.vision_keymap(vc, vprefix)
            + plan_lib.llm_keymap(lc, "llm:model.", "llm:lm_head.weight"))
  info = {"vision_config": vd, "llm_config": ld, "vision_prefix": vprefix.split(":")[-1],
          "source_dtype": plan_lib.source_dtype(ld), "vision_dtype": plan_lib.source_dtype(vd)}
  return plan_lib.Plan(
      format=fmt, config=cfg, source=source, keymap=keymap, fresh=("connector",),
      tokenizer_dir=params_store.find_tokenizer(llm_dir), info=info,
      reference={"kind": "towers", "vision_prefix": vprefix, "llm_prefix": "llm:"},
      declared_dtypes={"vision:": info["vision_dtype"], "llm:": info["source_dtype"]})


FORMATS: Dict[str, Callable[..., plan_lib.Plan]] = {
    "hf-llava": hf_llava.plan,
    "llava": llava.plan_llava,
    "acformer": llava.plan_acformer,
    "llava-stage1": llava.plan_stage1,
    "hf-clip": lambda *a, **k: _plan_towers("hf-clip", *a, **k),
}
EXPORT_FORMATS = ("hf-llava", "llava", "acformer")


def detect_format(input_path) -> Optional[str]:
  """The input format ``input_path`` looks like, from its files (None if unsure).

  ``"acformer_jax"`` means the directory is already one of this stack's checkpoints.
  """
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  p = pathlib.Path(input_path)
  if p.name == "mm_projector.bin" or (p / "mm_projector.bin").is_file() and not has_weights(p):
    return "llava-stage1"
  if (p / "model_config.json").is_file() and (p / "params").is_dir():
    return "acformer_jax"
  try:
    cfg = json.loads((p / "config.json").read_text())
  except (OSError, ValueError):
    return None
  kind = cfg.get("model_type")
  if kind == "llava":
    return "hf-llava"
  if kind in ("llava_llama", "llava") or "mm_projector_type" in cfg:
    return "acformer" if any(k.startswith("acformer_") for k in cfg) else "llava"
  if kind in ("clip", "clip_vision_model"):
    return "hf-clip"
  if kind == "llama":
    return "hf-llama"
  return None


def format_hint(fmt: Optional[str], input_path) -> str:
  """A sentence suggesting the right ``--format`` for ``input_path`` ('' if none)."""
  found = detect_format(input_path) if input_path is not None else None
  if found is None or found == fmt:
    return ""
  if found == "acformer_jax":
    return (f" ({input_path} is already an acformer_jax checkpoint: train, generate and "
            "evaluate read it as it is)")
  return f" ({input_path} looks like --format {found})"


def make_plan(fmt: str, input_path, vision=None, llm=None, connector: Optional[dict] = None,
              select_layer: int = -2, num_queries: Optional[int] = None) -> plan_lib.Plan:
  """Plans a conversion (reads config files and tensor headers only)."""
  if fmt not in FORMATS and not llm_format_family(fmt):
    import difflib  # pylint: disable=import-outside-toplevel
    close = difflib.get_close_matches(str(fmt), sorted(format_names()), n=1)
    raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(format_names())}"
                     + (f"; did you mean {close[0]!r}?" if close else "")
                     + format_hint(None, input_path))
  if input_path is None:
    raise ValueError("--input is required")
  if connector and fmt not in ("hf-clip", "llava-stage1") and not llm_format_family(fmt):
    raise ValueError(f"--connector does not apply to {fmt}: the checkpoint defines its connector")
  if num_queries is not None and fmt != "acformer":
    raise ValueError(f"--num_queries applies to --format acformer only, not {fmt}")
  planner = FORMATS.get(fmt) or (lambda *a, **k: _plan_towers(fmt, *a, **k))
  try:
    plan = planner(input_path, vision=vision, llm=llm, connector=connector,
                   select_layer=select_layer,
                   **({"num_queries": num_queries} if num_queries is not None else {}))
  except (ValueError, FileNotFoundError) as e:  # ConversionError is a ValueError
    hint = format_hint(fmt, input_path)
    try:
      better = type(e)(f"{e}{hint}") if hint else None
    except Exception:  # pylint: disable=broad-except  (an exception type with other args)
      better = None
    if better is None:
      raise
    raise better from None
  plan_lib.add_split_views(plan.source, plan.keymap, plan.problems)
  bad = towers_lib.validate(plan.config.vision) + connectors.validate(plan.config)
  if bad:  # the model cannot even be built: report with the config problems found so far
    plan_lib.fail(f"{fmt} input {input_path}", plan.problems + bad)
  return plan


__all__ = ["EXPORT_FORMATS", "FORMATS", "detect_format", "format_hint", "format_names",
           "llm_format_family", "make_plan"]

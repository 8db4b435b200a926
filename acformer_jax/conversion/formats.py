"""The input formats of ``acformer_jax.convert`` and their planners.

Spec: ``acformer.md`` 2.9 and 1.5; ``jax_practices.md`` item 12 (load the two towers
from separate pretrained sources).

=============  =================================================  ======================
format         ``--input``                                        also
=============  =================================================  ======================
hf-llava       ``LlavaForConditionalGeneration`` directory        (both towers inside)
llava          original LLaVA-1.5 directory (LLM + mm_projector)  ``--vision`` CLIP dir
acformer       official AcFormer directory (resampler + MLP)      ``--vision`` CLIP dir
llava-stage1   stage-1 ``mm_projector.bin`` (file or its dir)     ``--vision``, ``--llm``
hf-clip        ``CLIPVisionModel`` / ``CLIPModel`` directory      ``--llm`` LLaMA dir
hf-llama       ``LlamaForCausalLM`` directory (Vicuna, LLaMA-2)   ``--vision`` CLIP dir
=============  =================================================  ======================

Every plan describes a complete ``MultimodalLM``; with ``hf-clip`` / ``hf-llama`` the
connector is new (``--connector``, initialised at conversion), giving a stage-1
starting point built from pretrained towers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

from acformer_jax import config as config_lib
from acformer_jax.conversion import hf_llava, llava
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.conversion import towers
from acformer_jax.conversion.sources import TensorSource, has_weights
from acformer_jax.models import connectors
from acformer_jax.models import towers as towers_lib


def _plan_towers(fmt: str, input_path, vision=None, llm=None, connector=None,
                 select_layer: int = -2, **_) -> plan_lib.Plan:
  vision_dir, llm_dir = (input_path, llm) if fmt == "hf-clip" else (vision, input_path)
  other = "--llm (the LLaMA/Vicuna directory)" if fmt == "hf-clip" else \
      "--vision (the CLIP vision tower directory)"
  if (llm if fmt == "hf-clip" else vision) is None:
    raise ValueError(f"{fmt}: {other} is required; the output is a complete model whose "
                     "connector is initialised fresh (--connector)")
  if fmt == "hf-clip" and vision or fmt == "hf-llama" and llm:
    raise ValueError(f"{fmt}: --input already gives the "
                     f"{'vision tower' if fmt == 'hf-clip' else 'LLM'}")
  for p, what in ((vision_dir, "CLIP"), (llm_dir, "LLaMA")):
    if not has_weights(p):
      raise FileNotFoundError(f"{p}: no {what} weights found (expected model.safetensors, "
                              "pytorch_model.bin or their sharded index)")
  vd, ld = towers.read_hf_config(vision_dir), towers.read_hf_config(llm_dir)
  vc = towers.vision_config_from_hf(vd, select_layer=select_layer)
  lc = towers.llm_config_from_hf(ld)
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
      tokenizer_dir=plan_lib.find_tokenizer(llm_dir), info=info,
      reference={"kind": "towers", "vision_prefix": vprefix, "llm_prefix": "llm:"},
      declared_dtypes={"vision:": info["vision_dtype"], "llm:": info["source_dtype"]})


FORMATS: Dict[str, Callable[..., plan_lib.Plan]] = {
    "hf-llava": hf_llava.plan,
    "llava": llava.plan_llava,
    "acformer": llava.plan_acformer,
    "llava-stage1": llava.plan_stage1,
    "hf-clip": lambda *a, **k: _plan_towers("hf-clip", *a, **k),
    "hf-llama": lambda *a, **k: _plan_towers("hf-llama", *a, **k),
}
EXPORT_FORMATS = ("hf-llava", "llava", "acformer")


def make_plan(fmt: str, input_path, vision=None, llm=None, connector: Optional[dict] = None,
              select_layer: int = -2, num_queries: Optional[int] = None) -> plan_lib.Plan:
  """Plans a conversion (reads config files and tensor headers only)."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
  if input_path is None:
    raise ValueError("--input is required")
  if connector and fmt not in ("hf-clip", "hf-llama", "llava-stage1"):
    raise ValueError(f"--connector does not apply to {fmt}: the checkpoint defines its connector")
  if num_queries is not None and fmt != "acformer":
    raise ValueError(f"--num_queries applies to --format acformer only, not {fmt}")
  plan = FORMATS[fmt](input_path, vision=vision, llm=llm, connector=connector,
                      select_layer=select_layer,
                      **({"num_queries": num_queries} if num_queries is not None else {}))
  plan_lib.add_split_views(plan.source, plan.keymap, plan.problems)
  bad = towers_lib.validate(plan.config.vision) + connectors.validate(plan.config)
  if bad:  # the model cannot even be built: report with the config problems found so far
    plan_lib.fail(f"{fmt} input {input_path}", plan.problems + bad)
  return plan


__all__ = ["EXPORT_FORMATS", "FORMATS", "make_plan"]

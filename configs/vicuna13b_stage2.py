"""Vicuna-13B v1.5 + CLIP ViT-L/14-336, stage 2 (``acformer.md`` 2.2); see ``vicuna7b_stage2.py``.

Argument: the stage-1 connector. Recommended: 64 chips, FSDP over all (mesh (1, -1, 1)),
2 rows per chip, remat ``full`` (the trained 13B LLM's optimizer state takes most of the memory).
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("13b", 2, connector, remat_policy="full")

"""Vicuna-13B v1.5 + CLIP ViT-L/14-336, stage 1 (``acformer.md`` 2.1); see ``vicuna7b_stage1.py``.

Argument: ``acformer64`` | ``acformer144`` (default) | ``acformer256`` | ``mlp2x_gelu``.
Recommended: 64 chips (v4-128 / v5p-128), FSDP over all (mesh (1, -1, 1)), 4 rows per chip,
remat ``minimal``; 32 chips: ``--config.train.grad_accum_steps=2``.
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("13b", 1, connector, remat_policy="minimal")

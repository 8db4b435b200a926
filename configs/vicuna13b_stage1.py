"""Vicuna-13B v1.5 + CLIP ViT-L/14-336, stage 1 (``docs/method.md`` 2.1); see ``vicuna7b_stage1.py``.

Argument: ``acformer64`` | ``acformer144`` (default) | ``acformer256`` | ``mlp2x_gelu``.
Packed into 2048-token rows exactly as the 7B recipe (``experiment.PACKING``: the same
``max_images_per_row`` and global batch in rows; the 13B LLM's larger share of each step
only strengthens the case for filling rows). Recommended: 16 chips (v5p-32; the global batches are
multiples of 16 rows), FSDP over all (mesh (1, -1, 1)), remat ``minimal``.
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("13b", 1, connector, remat_policy="minimal")

"""Vicuna-13B v1.5 + CLIP ViT-L/14-336, stage 1 (``acformer.md`` 2.1); see ``vicuna7b_stage1.py``.

Argument: ``acformer64`` | ``acformer144`` (default) | ``acformer256`` | ``mlp2x_gelu``.
Recommended: 64 chips (v4-128 / v5p-128), FSDP over all (mesh (1, -1, 1)), 4 rows per chip,
remat ``minimal``; 32 chips: ``--config.train.grad_accum_steps=2``.
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  c = experiment.base_config()
  experiment.set_model(c, llm=experiment.vicuna("13b"), vision=experiment.clip_vit_l336(),
                       connector=connector)
  experiment.stage1(c)
  c.data.max_length = experiment.caption_max_length(c)  # 768 (576 tokens), 384 (145), 512 (257)
  c.mesh.shape = (1, -1, 1)
  c.model.remat_policy = "minimal"
  c.checkpoint.every = 500
  return c

"""Vicuna-7B v1.5 + CLIP ViT-L/14-336, stage 1 (feature alignment, ``acformer.md`` 2.1).

Argument: the connector preset (``experiment.CONNECTOR_PRESETS``): ``<type><K>`` for
every connector of the paper's Tables 3-4 -- acformer, pooling, pooling_pr, random_pr, pr,
c_abstractor, top_p, evit -- at K = 64 | 144 | 256 (65/145/257 visual tokens; the
official C-Abstractor gives K, E-ViT K+2), e.g. ``acformer144`` (default) or
``c_abstractor144``; or ``mlp2x_gelu`` (LLaVA-1.5's 576 tokens). ``data.max_length`` is
the connector's stage-1 rule, computed after command-line overrides. Only the connector trains (lr 1e-3, batch 256,
warmup 0.03 + cosine, 1 epoch of LCS-558K = 2181 steps).

  python -m acformer_jax.train --config configs/vicuna7b_stage1.py:acformer144 \
      --workdir gs://BUCKET/runs/ac144_s1 \
      --config.init.vision=hf_clip:/ckpt/clip-vit-large-patch14-336 \
      --config.init.llm=hf_llama:/ckpt/vicuna-7b-v1.5 \
      --config.data.manual_dir=/data/LLaVA-Pretrain --config.data.data_dir=/data/tfds

Recommended: 32 chips (TPU v4-64 / v5p-64), FSDP over all of them (mesh (1, -1, 1)):
8 rows per chip, no accumulation. The LLM is frozen but still back-propagates to the visual
tokens, so activations are kept: remat ``minimal`` (save the weight matmuls). 16 chips:
``--config.train.grad_accum_steps=2``.
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("7b", 1, connector, remat_policy="minimal")

"""Vicuna-7B v1.5 + CLIP ViT-L/14-336, stage 1 (feature alignment, ``docs/method.md`` 2.1).

Argument: the connector preset (``experiment.CONNECTOR_PRESETS``): ``<type><K>`` for
every connector of the paper's Tables 3-4 -- acformer, pooling, pooling_pr, random_pr, pr,
c_abstractor, top_p, evit -- at K = 64 | 144 | 256 (65/145/257 visual tokens; the
official C-Abstractor gives K, E-ViT K+2), e.g. ``acformer144`` (default) or
``c_abstractor144``; or ``mlp2x_gelu`` (LLaVA-1.5's 576 tokens). Only the connector trains
(lr 1e-3, warmup 0.03 + cosine, 1 epoch of LCS-558K).

Packed (``data.packing``): several captions per 2048-token row, each its own segment
(attention and positions restart per sample; the loss is the unpacked loss). A caption sample
is BOS + Nv visual tokens + ~20 caption tokens (the length profile in
``acformer_jax/benchmarking/length_profile.py``), so a row holds ~12 AcFormer-145 samples or
3 MLP-576 ones. ``data.max_images_per_row`` (12 / 3; 24 for acformer64, 7 for acformer256)
is the slot count that maximises real samples per padded FLOP: every slot is encoded, used
or not, and past that count the row's tokens run out first. The global batch counts ROWS:
16 rows x ~11.9 = ~191 samples/step for AcFormer-145, 80 x 3 = 240 for MLP-576 (LLaVA: 256),
multiples of 16 chips; ``train.steps`` is one epoch at that rate (``experiment.PACKING``).

  python -m acformer_jax.train --config configs/vicuna7b_stage1.py:acformer144 \
      --workdir gs://BUCKET/runs/ac144_s1 \
      --config.init.vision=hf_clip:/ckpt/clip-vit-large-patch14-336 \
      --config.init.llm=hf_llama:/ckpt/vicuna-7b-v1.5 \
      --config.data.manual_dir=/data/LLaVA-Pretrain --config.data.data_dir=/data/tfds

Recommended: 16 chips (v5p-32), FSDP over all of them (mesh (1, -1, 1)): 1 row of 2048
tokens per chip for AcFormer-145 (5 for MLP-576), no accumulation. The LLM is frozen but still back-propagates to the visual
tokens, so activations are kept: remat ``minimal`` (save the weight matmuls).
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("7b", 1, connector, remat_policy="minimal")

"""Vicuna-7B v1.5 + CLIP ViT-L/14-336, stage 2 (visual instruction tuning, ``docs/method.md`` 2.2).

Argument: the connector (as in ``vicuna7b_stage1.py``; use the stage-1 run's). Connector + LLM
train, the ViT stays frozen (lr 2e-5, warmup 0.03 + cosine, 1 epoch of llava_v1_5_mix665k).

Packed (``data.packing``) into 2048-token rows. On the documented LLaVA-665K length profile
(``acformer_jax/benchmarking/length_profile.py``: 12 components, 94% with an image, ~241
text tokens per sample) a 2048-row holding one sample is only 19.5% real tokens for
AcFormer-145 (40.1% for MLP-576); packed rows are 96.2% (81.3%) real. ``data.max_images_per_row`` = 7
for AcFormer-145 (5.2 samples/row), 3 for MLP-576 (2.1/row), 9 / 5 for acformer64 / 256:
the slot count that maximises real samples per padded FLOP (every slot is encoded; more
slots stop helping once the row's tokens run out). Text-only samples (ShareGPT) take no
slot. The global batch counts ROWS: 32 x 5.2 = ~167 samples/step for AcFormer-145, 64 x 2.1
= ~136 for MLP-576 (LLaVA: 128), multiples of 16 chips (``experiment.PACKING``).

Initialised from the stage-1 run, which holds the trained connector and the unchanged
converted CLIP and Vicuna:

  python -m acformer_jax.train --config configs/vicuna7b_stage2.py:acformer144 \
      --workdir gs://BUCKET/runs/ac144_s2 --config.init.params_from=orbax:gs://BUCKET/runs/ac144_s1 \
      --config.data.manual_dir=/data/llava_mix665k --config.data.data_dir=/data/tfds

(``--config.init.llm=hf_llama:/ckpt/vicuna-7b-v1.5`` takes the LLM straight from the converted
Hugging Face checkpoint instead.) Recommended: 16 chips (v5p-32), FSDP over all (mesh
(1, -1, 1)), 2 rows per chip (AcFormer-145; 4 for MLP-576), remat ``minimal``; on 16 GB
chips use ``full``.
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("7b", 2, connector, remat_policy="minimal")

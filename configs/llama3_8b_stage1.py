"""Meta-Llama-3-8B-Instruct + CLIP ViT-L/14-336, stage 1 (feature alignment, ``docs/method.md`` 2.1).

Argument: the connector preset (default ``acformer144``: AcFormer-145). Only the connector
trains; recipe as ``vicuna7b_stage1.py`` (lr 1e-3, batch 256, ``plain`` template) with the
llama3 family's decoder (``models/families/llama3.py``).

  python -m acformer_jax.train --config configs/llama3_8b_stage1.py:acformer144 \
      --workdir gs://BUCKET/runs/llama3_8b_ac144_s1 \
      --config.init.vision=hf_clip:/ckpt/clip-vit-large-patch14-336 \
      --config.init.llm=hf_llama:/ckpt/Meta-Llama-3-8B-Instruct \
      --config.data.tokenizer_path=/ckpt/Meta-Llama-3-8B-Instruct \
      --config.data.manual_dir=/data/LLaVA-Pretrain --config.data.data_dir=/data/tfds
"""
from acformer_jax.models.families import llama3
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.family_llava15(llama3.PRESETS["8b"], 1, connector, remat_policy="minimal")

"""Vicuna-7B v1.5 + CLIP ViT-L/14-336, stage 2 (visual instruction tuning, ``acformer.md`` 2.2).

Argument: the connector (as in ``vicuna7b_stage1.py``; use the stage-1 run's). Connector + LLM
train, the ViT stays frozen (lr 2e-5, batch 128, warmup 0.03 + cosine, 1 epoch of
llava_v1_5_mix665k = 5198 steps). Initialised from the stage-1 run, which holds the trained
connector and the unchanged converted CLIP and Vicuna:

  python -m acformer_jax.train --config configs/vicuna7b_stage2.py:acformer144 \
      --workdir gs://BUCKET/runs/ac144_s2 --config.init.params_from=orbax:gs://BUCKET/runs/ac144_s1 \
      --config.data.manual_dir=/data/llava_mix665k --config.data.data_dir=/data/tfds

(``--config.init.llm=hf_llama:/ckpt/vicuna-7b-v1.5`` takes the LLM straight from the converted
Hugging Face checkpoint instead.) Recommended: 32 chips, FSDP over all (mesh (1, -1, 1)),
4 rows per chip, remat ``minimal``; on 16 GB chips use ``full``.
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("7b", 2, connector, remat_policy="minimal")

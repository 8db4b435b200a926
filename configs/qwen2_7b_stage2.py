"""Qwen2-7B-Instruct + CLIP ViT-L/14-336, stage 2 (visual instruction tuning, ``docs/method.md`` 2.2).

Argument: the connector preset (the stage-1 run's; default ``acformer144``). Connector + LLM
train; recipe as ``vicuna7b_stage2.py`` (lr 2e-5, batch 128) with the qwen2 family's chat
template (its registry default) and decoder:

  python -m acformer_jax.train --config configs/qwen2_7b_stage2.py:acformer144 \
      --workdir gs://BUCKET/runs/qwen2_7b_ac144_s2 \
      --config.init.params_from=orbax:gs://BUCKET/runs/qwen2_7b_ac144_s1 \
      --config.data.tokenizer_path=/ckpt/Qwen2-7B-Instruct \
      --config.data.manual_dir=/data/llava_mix665k --config.data.data_dir=/data/tfds
"""
from acformer_jax.models.families import qwen2
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.family_llava15(qwen2.PRESETS["7b"], 2, connector, remat_policy="minimal")

"""Tiny AcFormer, stage 1 (caption alignment) on the offline shapes demo, 8 CPU devices.

  python -m acformer_jax.train --config configs/tiny_acformer_stage1.py --workdir /tmp/tiny1 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds

Recipe as ``docs/method.md`` 2.1 (connector only, ``plain``, warmup 0.03 + cosine, clip 1.0) with
the batch and step count scaled to the demo. The towers are random (nothing pretrained exists
offline), so the LLM is frozen random here; stage 2 trains it.
"""
from acformer_jax.demo import recipe
from acformer_jax.trainer import experiment


def get_config():
  c = experiment.base_config()
  experiment.stage1(c)
  recipe.tiny(c, "acformer")
  c.data.builder = "acformer_demo/caption_56"
  # Packed: captions are 27-55 tokens with the 17 visual ones, so a 192-token row holds about
  # 4.5 of them (5 image slots); 8 rows see ~36 samples per step (32 unpacked 64-token rows
  # before), at ~94% real tokens instead of ~63%.
  c.data.packing = True
  c.data.max_length = 192
  c.data.max_images_per_row = 5
  c.train.global_batch_size = 8
  c.train.steps = 150
  c.train.optimizer.lr = 1e-3
  return c

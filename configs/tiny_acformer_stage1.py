"""Tiny AcFormer, stage 1 (caption alignment) on the offline shapes demo, 8 CPU devices.

  python -m acformer_jax.train --config configs/tiny_acformer_stage1.py --workdir /tmp/tiny1 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds

Recipe as ``docs/method.md`` 2.1 (``plain``, warmup 0.03 + cosine, clip 1.0) with the batch and
step count scaled to the demo, and one deliberate change: the LLM is random (none of this size
exists offline), so it trains with the connector (``train.trainable``, set by
``demo/recipe.py``). LLaVA freezes Vicuna here because it already speaks; aligning a connector
to a frozen *random* LLM teaches nothing (loss 5.9 -> 5.7 in 150 steps), while training both on
the dense captions grounds colours, counts and positions before stage 2 (caption loss 0.52
after 200 steps; held-out 41.0% after 200 stage-2 steps vs 39.0% after 150 connector-only +
300 stage-2 steps; 2026-12-02).
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
  c.train.steps = 200
  c.train.optimizer.lr = 1e-3
  return c

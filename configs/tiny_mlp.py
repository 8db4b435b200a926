"""Tiny LLaVA-1.5 baseline (``mlp2x_gelu`` connector, all 64 patches) on the demo, either stage.

  python -m acformer_jax.train --config configs/tiny_mlp.py:stage1 --workdir /tmp/mlp1 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds
  python -m acformer_jax.train --config configs/tiny_mlp.py:stage2 --workdir /tmp/mlp2 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds --config.init.params_from=orbax:/tmp/mlp1
"""
from acformer_jax.demo import recipe
from acformer_jax.trainer import experiment


def get_config(arg: str = "stage1"):
  if arg not in ("stage1", "stage2"):
    raise ValueError(f"configs/tiny_mlp.py: argument must be stage1 or stage2, got {arg!r}")
  c = experiment.base_config()
  if arg == "stage1":
    experiment.stage1(c)
    recipe.tiny(c, "mlp2x_gelu")
    c.data.builder = "acformer_demo/caption_56"
    # Captions with 64 visual tokens: 74-102 tokens; 8 rows of 384 hold ~32 samples per step.
    c.data.max_length = 384
    c.data.max_images_per_row = 4
    c.train.global_batch_size = 8
    c.train.steps = 200  # as configs/tiny_acformer_stage1.py (the random LLM trains too)
  else:
    experiment.stage2(c)
    recipe.tiny(c, "mlp2x_gelu")
    c.data.builder = "acformer_demo/qa_56"
    # QA with 64 visual tokens: 167-202 tokens untruncated; 16 rows of 512 (3 image slots)
    # hold ~35 samples per step.
    c.data.max_length = 512
    c.data.max_images_per_row = 3
    c.train.global_batch_size = 16
    c.data.group_by_length = False
    c.train.steps = 200  # as configs/tiny_acformer_stage2.py
    c.init.allow_random = False
    c.eval.update(benchmark="demo", num_questions=500, batch_size=50)  # as tiny_acformer_stage2
  c.data.packing = True
  c.train.optimizer.lr = 1e-3
  return c

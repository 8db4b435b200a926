"""Tiny LLaVA-1.5 baseline (``mlp2x_gelu`` connector, all 64 patches) on the demo, either stage.

  python -m acformer_jax.train --config configs/tiny_mlp.py:stage1 --workdir /tmp/mlp1 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds
  python -m acformer_jax.train --config configs/tiny_mlp.py:stage2 --workdir /tmp/mlp2 \
      --local_device_count=8 --config.data.data_dir=/tmp/tfds --config.init.params_from=orbax:/tmp/mlp1
"""
from acformer_jax.trainer import experiment


def get_config(arg: str = "stage1"):
  if arg not in ("stage1", "stage2"):
    raise ValueError(f"configs/tiny_mlp.py: argument must be stage1 or stage2, got {arg!r}")
  c = experiment.base_config()
  if arg == "stage1":
    experiment.stage1(c)
    experiment.tiny(c, "mlp2x_gelu")
    c.data.builder = "acformer_demo/caption_56"
    c.data.max_length = 128
    c.train.steps = 150
  else:
    experiment.stage2(c)
    experiment.tiny(c, "mlp2x_gelu")
    c.data.builder = "acformer_demo/qa_56"
    c.data.max_length = 176
    c.data.group_by_length = False
    c.train.steps = 300
    c.init.allow_random = False
    c.eval.update(benchmark="demo", num_questions=500, batch_size=50)  # as tiny_acformer_stage2
  c.train.global_batch_size = 32
  c.train.optimizer.lr = 1e-3
  return c

"""Fine-tune a checkpoint on your own LLaVA-format data (stage-2 recipe, ``docs/method.md`` 2.2).

  python -m acformer_jax.train --config configs/finetune.py \\
      --config.init.from_pretrained=DIR --config.data.json_path=my.json \\
      --config.data.image_root=imgs --config.train.epochs=3 --workdir W

``DIR`` is a converted or exported acformer_jax checkpoint, a training run directory, or a
transformers ``LlavaForConditionalGeneration`` directory (e.g. llava-hf/llava-1.5-7b-hf,
converted on the fly). Everything model-shaped comes from it: the towers, the connector,
the image token id, the tokenizer (with its added tokens) and the template defaults
(``vicuna_v1``, pad-to-square, ``max_length``); this file holds only the recipe: connector +
LLM train, the ViT stays frozen, lr 2e-5 with 3% warmup and cosine decay, batch 128,
modality-length grouping. Say how long to train: ``--config.train.epochs=N`` (steps from
the dataset size after skipped samples) or ``--config.train.steps=N``. Setting a model field that contradicts the checkpoint is an error
that names the field and both values. The run exports ``W/export`` with the tokenizer it
trained with; ``python -m acformer_jax.export --checkpoint W/export --format hf-llava``
turns it back into a transformers directory. See docs/training.md.
"""
from ml_collections import config_dict

from acformer_jax.trainer import experiment


def get_config():
  c = experiment.base_config()
  experiment.stage2(c)
  experiment.unset_model(c)               # from init.from_pretrained
  c.data.builder = "llava_instruct"
  for field in ("tokenizer_path", "template", "max_length"):
    c.data[field] = None                  # None = the checkpoint's
  c.data.pad_to_square = None
  c.train.steps = config_dict.placeholder(int)  # give train.epochs or train.steps
  c.mesh.shape = (1, -1, 1)               # FSDP over every device
  c.model.remat_policy = "minimal"
  c.checkpoint.every = 500
  return c

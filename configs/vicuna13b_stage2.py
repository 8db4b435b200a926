"""Vicuna-13B v1.5 + CLIP ViT-L/14-336, stage 2 (``docs/method.md`` 2.2); see ``vicuna7b_stage2.py``.

Argument: the stage-1 connector. Packed into 2048-token rows exactly as the 7B recipe
(``experiment.PACKING``). Recommended: 16 chips (v5p-32; the global batches are multiples of 16 rows), FSDP over
all (mesh (1, -1, 1)),
remat ``minimal`` (``full`` if memory runs short: the trained 13B LLM's optimizer state takes
most of it).
"""
from acformer_jax.trainer import experiment


def get_config(connector: str = "acformer144"):
  return experiment.vicuna_llava15("13b", 2, connector, remat_policy="full")

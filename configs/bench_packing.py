"""CPU packing benchmark: LLaVA-1.5 stage 1 and 2 steps at 7B cost proportions, packed vs padded.

``python -m acformer_jax.bench packing --config configs/bench_packing.py`` (docs/performance.md).

The model is ``bench_cpu_stage1.py``'s scaled Vicuna-7B + ViT-L/14 (LLM 512 wide x 12
layers, ViT 256 wide, 2 computed blocks, resampler 1 block) with EVERY token length scaled
by 1/4, so a bench row holds the same samples as a 2048-token row at 7B:

* images 168 px / patch 14 = 144 patches: ``mlp2x_gelu`` 144 visual tokens (576 / 4),
  ``acformer:36`` 37 (AcFormer-145 / 4; 9 anchors per ViT head);
* rows of 512 tokens (2048 / 4);
* text lengths of the documented length profile (``benchmarking/length_profile.py``:
  LCS-558K for stage 1, LLaVA-665K for stage 2) times 1/4.

Per sample the ViT and connector cost scale with the image's tokens like the LLM's, so the
ViT / connector / LLM split of a step stays near the 7B one (the run prints both FLOP-ideal
ratios). ``data.max_images_per_row`` per stage and connector is the recipe's
(``trainer/experiment.PACKING``). Padded = one sample per row (the unpacked recipe at 2048).
Global batch: ``rows`` per stage, the same for every variant of that stage. Float32, no remat.
"""
from acformer_jax.trainer import experiment


def get_config(arg: str = ""):
  del arg
  c = experiment.base_config()
  experiment.stage1(c)
  c.model.vision.update(image_size=168, patch_size=14, hidden_size=256, intermediate_size=1024,
                        num_layers=3, num_heads=4, select_layer=-2)
  c.model.llm.update(vocab_size=1536, hidden_size=512, intermediate_size=1376, num_layers=12,
                     num_heads=4, num_kv_heads=4, max_position_embeddings=2048)
  c.model.connector.update(type="acformer", num_queries=36, depth=1, heads=2, dim_head=64,
                           ff_mult=4)
  c.model.image_token_id = 1536
  c.model.update(dtype="float32", param_dtype="float32", remat_policy="none", scan_layers=True)
  c.train.update(global_batch_size=2, steps=1000)
  c.init.allow_random = True
  c.bench = dict(
      row_length=512, length_scale=0.25,
      # name -> (connector at bench scale, recipe preset whose max_images_per_row is used)
      variants="acformer144=acformer:36,mlp2x_gelu=mlp2x_gelu",
      rows_stage1=2, rows_stage2=2,
      text_sweep="0.5,1,2,4",
      reps=3, warmup=1, seed=0)
  return c

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
import importlib.util
import pathlib


def _bench_cpu_stage1():
  path = pathlib.Path(__file__).resolve().parent / "bench_cpu_stage1.py"
  spec = importlib.util.spec_from_file_location("_acformer_bench_cpu_stage1", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str = ""):
  del arg
  c = _bench_cpu_stage1()  # the scaled model; only the token lengths change here
  c.model.vision.image_size = 168
  c.model.llm.max_position_embeddings = 2048
  c.model.connector.num_queries = 36
  c.train.global_batch_size = 2
  c.init.allow_random = True
  c.bench = dict(
      row_length=512, length_scale=0.25,
      # name -> (connector at bench scale, recipe preset whose max_images_per_row is used)
      variants="acformer144=acformer:36,mlp2x_gelu=mlp2x_gelu",
      layouts="s1_packed,s2_packed,s2_padded", rows_stage1=2, rows_stage2=2,
      text_sweep="0.5,1,2,4",
      reps=3, warmup=1, seed=0)
  return c

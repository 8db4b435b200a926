"""CPU speed benchmark: stage-1 pretraining with LLaVA-1.5 cost proportions, scaled down.

``python -m acformer_jax.bench speed --config configs/bench_cpu_stage1.py`` (docs/performance.md).

The paper's speed column (``docs/method.md`` 1.7) compares stage-1 step times of ViT-L/14-336 +
Vicuna-7B with 576 visual tokens (``mlp2x_gelu``) and 145 (AcFormer, K=144). What decides
that ratio is how the step's FLOPs split between the frozen ViT (forward only), the trained
connector and the frozen LLM (forward + input gradients) at each token count. With
~30-token captions (BOS + 31 text tokens here) the 7B split is (``trainer/flops.py``):

  ============  ==========================  ==========================
                576 tokens (mlp2x_gelu)     145 tokens (acformer)
  ============  ==========================  ==========================
  7B            ViT 2.2%, conn 0.4%         ViT 7.1%, conn 1.8%
  this config   ViT 2.4%, conn 1.1%         ViT 8.3%, conn 3.1%
  ============  ==========================  ==========================

Kept from the real model: 336 px / patch 14 (576 patches, so 576 / 65 / 145 / 257 tokens),
head widths (ViT 64, LLM 128, resampler 64), the LLaMA MLP ratio, the lm_head's share of
the LLM (2%), the resampler's inner width (half the ViT width) and FF ratio (4x), frozen
towers and the trained connector (stage 1, AdamW). Scaled: widths (LLM 512, ViT 256),
depths (LLM 12, ViT 2 computed blocks, resampler 1 block) and vocabulary (1536), so one
``mlp2x_gelu`` step is ~110 GFLOP (about 1-2 s on the 2-core CPU). The ViT has 4 heads,
so an AcFormer budget K takes K/4 anchors per head (same token counts as 16 heads).
Float32 (bf16 is unusable on this CPU, ``docs/environment.md`` 4), no remat, layers under one scan.
"""
from acformer_jax.trainer import experiment


def get_config(arg: str = ""):
  del arg
  c = experiment.base_config()
  experiment.stage1(c)
  c.model.vision.update(image_size=336, patch_size=14, hidden_size=256, intermediate_size=1024,
                        num_layers=3, num_heads=4, select_layer=-2)
  c.model.llm.update(vocab_size=1536, hidden_size=512, intermediate_size=1376, num_layers=12,
                     num_heads=4, num_kv_heads=4)
  c.model.connector.update(type="acformer", num_queries=144, depth=1, heads=2, dim_head=64,
                           ff_mult=4)
  c.model.image_token_id = 1536
  c.model.update(dtype="float32", param_dtype="float32", remat_policy="none", scan_layers=True)
  c.train.update(global_batch_size=1, steps=1000)
  c.bench = dict(text_len=32, connectors="mlp2x_gelu,acformer144,acformer256,acformer64",
                 reps=7, warmup=2)
  return c

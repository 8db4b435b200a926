"""GPU check (run by benchmarks/gpu_check.sh on a machine with one NVIDIA GPU).

1. ``attention(impl="cudnn")`` against ``impl="xla"`` (bf16, causal + segment ids + GQA,
   values and gradients) and the decode path (cache offset) through the cudnn setting.
2. A ~1B-parameter packed stage-2 train step in bf16 (the trainer's step): median step time
   and MFU = model FLOPs (real tokens) / step time / the chip's dense bf16 peak.
Prints one JSON line at the end.
"""
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax import config as C, sharding
from acformer_jax.models import attention as A
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import flops, optim, state as S, step as ST

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "RTX 4090": 165e12}  # dense, vendor datasheets


def peak_for(kind: str) -> float:
  for k, v in PEAK_BF16.items():
    if k.lower() in kind.lower():
      return v
  return float("nan")


def check_cudnn():
  r = np.random.RandomState(0)
  b, t, h, kvh, d = 2, 512, 8, 2, 128
  q, k, v = (jnp.asarray(r.randn(b, t, n, d), jnp.bfloat16) for n in (h, kvh, kvh))
  seg = np.ones((b, t), np.int32)
  seg[:, 200:] = 2
  seg[1, 450:] = 0
  seg = jnp.asarray(seg)
  kw = dict(causal=True, q_segment_ids=seg, kv_segment_ids=seg)

  def f(impl, dtype):
    def loss(q, k, v):
      o = A.attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), impl=impl, **kw)
      return jnp.sum(o.astype(jnp.float32) ** 2), o
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  (_, o_c), g_c = f("cudnn", jnp.bfloat16)
  (_, o_x), g_x = f("xla", jnp.float32)  # float32 reference
  lowered = jax.jit(lambda q, k, v: A.attention(q, k, v, impl="cudnn", **kw)).lower(q, k, v)
  uses_cudnn = "cudnn" in lowered.compile().as_text().lower()
  err = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
  scale = lambda b: float(jnp.max(jnp.abs(b.astype(jnp.float32))))
  out = {"cudnn_kernel_in_hlo": uses_cudnn, "out_max_abs_err": err(o_c, o_x),
         "out_max_abs": scale(o_x),
         "grad_rel_err": max(err(a, b) / scale(b) for a, b in zip(g_c, g_x))}
  # A cached prefill's shape: 64 queries at slots 0..63 against a 512-slot cache, kv_mask.
  kv_mask = jnp.asarray(np.arange(t)[None] < np.array([[64], [40]]))
  pre = dict(causal=True, kv_mask=kv_mask)
  o_p = jax.jit(lambda q, k, v: A.attention(q, k, v, impl="cudnn", **pre))(q[:, :64], k, v)
  o_r = jax.jit(lambda q, k, v: A.attention(q, k, v, impl="xla", **pre))(
      *(a.astype(jnp.float32) for a in (q[:, :64], k, v)))
  out["prefill_max_abs_err"] = err(o_p[:, :40], o_r[:, :40])
  out["ok"] = uses_cudnn and out["out_max_abs_err"] < 3e-2 * max(out["out_max_abs"], 1) \
      and out["grad_rel_err"] < 3e-2 and out["prefill_max_abs_err"] < 3e-2 * max(out["out_max_abs"], 1)
  return out


def model_1b() -> C.ModelConfig:
  """CLIP ViT-L/14-336 (frozen) + acformer144 + a 1.1B LLaMA (TinyLlama shape, MHA)."""
  llm = C.LLMConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                    num_heads=32, num_kv_heads=32, max_position_embeddings=4096)
  return C.ModelConfig(llm=llm, connector=C.ConnectorConfig(num_queries=144),
                       image_token_id=32000, dtype="bfloat16", param_dtype="float32",
                       remat_policy="minimal", attention="cudnn")


def packed_batch(mc, rows: int, seq: int, per_row: int = 4, seed: int = 0):
  """Rows of ``per_row`` samples (image + text, text supervised), filled exactly to ``seq``."""
  r = np.random.RandomState(seed)
  nv = C.num_visual_tokens(mc)
  s = mc.vision.image_size
  each = seq // per_row
  ids = r.randint(3, mc.llm.vocab_size, size=(rows, seq)).astype(np.int32)
  labels = ids.copy()
  seg = np.zeros((rows, seq), np.int32)
  pos = np.zeros((rows, seq), np.int32)
  for j in range(per_row):
    lo, hi = j * each, (j + 1) * each if j < per_row - 1 else seq
    ids[:, lo] = 1
    ids[:, lo + 1:lo + 1 + nv] = mc.image_token_id
    labels[:, lo:lo + 1 + nv] = -100
    seg[:, lo:hi] = j + 1
    pos[:, lo:hi] = np.arange(hi - lo)
  batch = {"input_ids": ids, "labels": labels, "segment_ids": seg, "positions": pos,
           "attention_mask": np.ones((rows, seq), np.int32),
           "images": r.randn(rows, per_row, s, s, 3).astype(np.float32),
           "image_mask": np.ones((rows, per_row), bool)}
  if "segment_ids" not in ST.BATCH_KEYS:  # before packing lands: one image per row
    batch["images"] = batch["images"][:, 0]
    batch["input_ids"][:, each:] = np.where(batch["input_ids"][:, each:] == mc.image_token_id, 5,
                                            batch["input_ids"][:, each:])
  return {k: batch[k] for k in ST.BATCH_KEYS}


def time_step(mc, rows: int, seq: int, reps: int = 5):
  model = MultimodalLM(mc)
  tx, schedule = optim.make_optimizer({"lr": 1e-5, "warmup_ratio": 0.0}, 100)
  trainable = ("connector/", "llm/")
  state_fn = S.make_state_fn(model, mc, tx, trainable)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  abstract, shardings = S.abstract_state(state_fn, mesh)
  call = ST.jit_train_step(ST.make_train_step(model, tx, schedule, trainable=trainable,
                                              loss_impl="tiled", vocab_chunk=8000), mesh, shardings)
  state = jax.jit(state_fn, out_shardings=shardings)(jax.random.key(0))
  batch = ST.device_batch(packed_batch(mc, rows, seq), mesh)
  t0 = time.perf_counter()
  state, m = call(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    state, m = call(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  if "segment_ids" in ST.BATCH_KEYS:  # per sample: its image, its tokens, its own attention
    f = rows * 4 * flops.train_step_flops(mc, 1, seq // 4, llm_trainable=True).total
  else:
    f = flops.train_step_flops(mc, rows, seq, llm_trainable=True).total
  step_s = float(np.median(times))
  kind = jax.devices()[0].device_kind
  return {"device": kind, "params": int(n_params), "rows": rows, "seq": seq,
          "compile_s": compile_s, "step_s": step_s, "model_flops": float(f),
          "mfu": float(f) / step_s / peak_for(kind), "peak_bf16": peak_for(kind),
          "loss": float(m["loss"]), "finite": bool(m["finite"])}


def main():
  print("devices:", jax.devices(), flush=True)
  res = {"cudnn_vs_xla": check_cudnn()}
  print(json.dumps(res), flush=True)
  mc = model_1b()
  for rows in (8, 4):
    try:
      res["train_step"] = time_step(mc, rows, 2048)
      break
    except Exception as e:  # pylint: disable=broad-except  (OOM: retry smaller)
      res.setdefault("errors", []).append(f"rows={rows}: {type(e).__name__}: {str(e)[:300]}")
  print(json.dumps(res), flush=True)
  return 0 if res["cudnn_vs_xla"]["ok"] and "train_step" in res else 1


if __name__ == "__main__":
  sys.exit(main())

"""Conversion at LLaVA-1.5-7B scale: wall time, MB/s and peak RSS per process.

  python benchmarks/convert_7b.py --scratch /work/scratch/convert7b [--processes 1,2] [--keep]

Writes a randomly initialised checkpoint with the exact tensor shapes of
llava-hf/llava-1.5-7b-hf (Vicuna-7B with the 32064-row vocabulary, CLIP ViT-L/14-336,
the mlp2x_gelu projector; bfloat16 safetensors shards in the transformers 5 layout),
tensor by tensor from a small pool of N(0, 0.02) values, so generation stays small in
RAM. Then runs ``python -m acformer_jax.convert --format hf-llava`` with 1 process and
with 2 processes (``jax.distributed`` on one machine, gloo, ``--devices`` CPU devices
each) and prints each process's peak RSS (``ru_maxrss``: resident anonymous + mapped
file pages) against the checkpoint size. Spec: ``docs/jax_practices.md`` item 7 and 9.1;
the bars are 1.25x (1 process) and 0.7x per process (2 processes). The PyTorch
self-check is skipped (a float32 torch copy of 7B needs 28 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import socket
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acformer_jax.conversion.writer import ShardedWriter  # noqa: E402

BARS = {1: 1.25, 2: 0.7}
V, D, F, L, VOCAB = 1024, 4096, 11008, 32, 32064   # CLIP width, LLM width, MLP, layers, vocab
VIT_LAYERS, VIT_MLP, POS = 24, 4096, 577


def llava_7b_tensors():
  """``(name, shape)`` of llava-1.5-7b-hf as transformers 5 saves it."""
  t = [("vision_tower.embeddings.class_embedding", (V,)),
       ("vision_tower.embeddings.patch_embedding.weight", (V, 3, 14, 14)),
       ("vision_tower.embeddings.position_embedding.weight", (POS, V)),
       ("vision_tower.pre_layrnorm.weight", (V,)), ("vision_tower.pre_layrnorm.bias", (V,))]
  for i in range(VIT_LAYERS):
    p = f"vision_tower.encoder.layers.{i}."
    for n in ("layer_norm1", "layer_norm2"):
      t += [(p + n + ".weight", (V,)), (p + n + ".bias", (V,))]
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
      t += [(p + f"self_attn.{n}.weight", (V, V)), (p + f"self_attn.{n}.bias", (V,))]
    t += [(p + "mlp.fc1.weight", (VIT_MLP, V)), (p + "mlp.fc1.bias", (VIT_MLP,)),
          (p + "mlp.fc2.weight", (V, VIT_MLP)), (p + "mlp.fc2.bias", (V,))]
  t += [("vision_tower.post_layernorm.weight", (V,)), ("vision_tower.post_layernorm.bias", (V,)),
        ("multi_modal_projector.linear_1.weight", (D, V)),
        ("multi_modal_projector.linear_1.bias", (D,)),
        ("multi_modal_projector.linear_2.weight", (D, D)),
        ("multi_modal_projector.linear_2.bias", (D,)),
        ("language_model.model.embed_tokens.weight", (VOCAB, D))]
  for i in range(L):
    p = f"language_model.model.layers.{i}."
    t += [(p + "input_layernorm.weight", (D,)), (p + "post_attention_layernorm.weight", (D,))]
    t += [(p + f"self_attn.{n}.weight", (D, D)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    t += [(p + "mlp.gate_proj.weight", (F, D)), (p + "mlp.up_proj.weight", (F, D)),
          (p + "mlp.down_proj.weight", (D, F))]
  t += [("language_model.model.norm.weight", (D,)), ("language_model.lm_head.weight", (VOCAB, D))]
  return t


def llava_7b_config() -> dict:
  return {
      "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
      "dtype": "bfloat16", "image_token_index": 32000, "image_seq_length": 576,
      "projector_hidden_act": "gelu", "vision_feature_layer": -2,
      "vision_feature_select_strategy": "default", "multimodal_projector_bias": True,
      "tie_word_embeddings": False, "pad_token_id": 32001,
      "text_config": {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": D,
                      "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": 32,
                      "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                      "max_position_embeddings": 4096, "tie_word_embeddings": False,
                      "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001},
      "vision_config": {"model_type": "clip_vision_model", "hidden_size": V,
                        "intermediate_size": VIT_MLP, "num_hidden_layers": VIT_LAYERS,
                        "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                        "projection_dim": 768}}


def generate(directory: pathlib.Path, seed: int = 0) -> int:
  """Writes the random checkpoint; returns its size in bytes."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  pool = (0.02 * rng.standard_normal(1 << 22)).astype(ml_dtypes.bfloat16)
  pool = np.concatenate([pool, pool])
  tensors = llava_7b_tensors()
  w = ShardedWriter(directory, [(n, s, ml_dtypes.bfloat16) for n, s in tensors],
                    max_shard_bytes=5 << 30)
  half = len(pool) // 2
  for name, shape in tensors:
    n = int(np.prod(shape))
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layrnorm.weight")):
      w.write(name, np.ones(shape, ml_dtypes.bfloat16))
      continue
    out = np.empty(n, ml_dtypes.bfloat16)
    for off in range(0, n, half):
      k = min(half, n - off)
      s = int(rng.integers(half))
      out[off:off + k] = pool[s:s + k]
    w.write(name, out.reshape(shape))
  w.close()
  (directory / "config.json").write_text(json.dumps(llava_7b_config(), indent=2))
  return w.total_size


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def convert(src: pathlib.Path, out: pathlib.Path, processes: int, devices: int) -> dict:
  """Runs the converter with ``processes`` processes; returns wall time and reports."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
  base = [sys.executable, "-m", "acformer_jax.convert", "--format=hf-llava", f"--input={src}",
          f"--output={out}", "--skip_check", "--noprogress", f"--local_device_count={devices}"]
  port = _free_port()
  procs = []
  t0 = time.time()
  for i in range(processes):
    extra = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
             f"--process_id={i}"] if processes > 1 else []
    procs.append(subprocess.Popen(base + extra, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate() for p in procs]
  wall = time.time() - t0
  reports = []
  for p, (so, se) in zip(procs, outs):
    if p.returncode != 0:
      raise RuntimeError(f"converter exited with {p.returncode}:\n{se[-4000:]}")
    line = next(l for l in so.splitlines() if l.startswith("CONVERT_REPORT "))
    reports.append(json.loads(line[len("CONVERT_REPORT "):]))
  return {"wall_s": wall, "reports": sorted(reports, key=lambda r: r["process"])}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--scratch", required=True, help="scratch directory (~30 GB free needed)")
  ap.add_argument("--processes", default="1,2", help="comma-separated process counts to run")
  ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices per process")
  ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
  args = ap.parse_args(argv)
  scratch = pathlib.Path(args.scratch)
  src = scratch / "llava-1.5-7b-random"
  try:
    if (src / "config.json").is_file():
      size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
      print(f"reusing {src} ({size / 1e9:.2f} GB)", flush=True)
    else:
      t0 = time.time()
      size = generate(src)
      rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
      print(f"generated {src}: {size / 1e9:.2f} GB bf16 in {time.time() - t0:.0f} s "
            f"(generator peak RSS {rss:.2f} GiB)", flush=True)
    rows, ok = [], True
    for n in (int(x) for x in args.processes.split(",")):
      out = scratch / f"converted-{n}proc"
      shutil.rmtree(out, ignore_errors=True)
      res = convert(src, out, n, args.devices)
      out_size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
      shutil.rmtree(out, ignore_errors=True)
      for r in res["reports"]:
        ratio = r["peak_rss_mb"] * 2**20 / size
        passed = ratio <= BARS.get(n, 1.25)
        ok &= passed
        rows.append((n, r["process"], res["wall_s"], size / 2**20 / res["wall_s"],
                     r["seconds_load"], r["bytes_read_this_process"] / 1e9,
                     r["peak_rss_mb"] / 1024, ratio, BARS.get(n), passed))
      print(f"{n} process(es): wall {res['wall_s']:.0f} s, Orbax output {out_size / 1e9:.2f} GB",
            flush=True)
    print(f"\ncheckpoint: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB), "
          f"{len(llava_7b_tensors())} tensors")
    print("procs  proc  wall_s  MB/s   load_s  read_GB  peak_RSS_GiB  RSS/ckpt  bar   ok")
    for n, i, wall, mbs, load, read, rss, ratio, bar, passed in rows:
      print(f"{n:5d}  {i:4d}  {wall:6.0f}  {mbs:5.0f}  {load:6.0f}  {read:7.2f}  {rss:12.2f}"
            f"  {ratio:8.2f}  {bar:4.2f}  {'yes' if passed else 'NO'}")
    return 0 if ok else 1
  finally:
    if not args.keep:
      shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())

"""Decode with the layer scan vs unrolled layers on `bench torch`'s `small` model.

Shows where each variant's decode step goes (op categories, top op kinds) and its
decode-only tokens/s, interleaved in one process; the greedy tokens must agree. Written
for the decode profile in docs/performance.md ("Where the time goes"): both variants copy
each layer's weights out of the stacked parameters every step.

  python benchmarks/decode_layer_copies.py [--batches 1,8] [--reps 5] [--out /tmp/dlc]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

from acformer_jax import bench


def _model_and_params():
  from acformer_jax.benchmarking import torch_compare as tc, workload  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion.pretrained import load_pretrained  # pylint: disable=import-outside-toplevel
  pr = tc.PRESETS["small"]
  hf, patches = tc.hf_model(pr)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    model, params = load_pretrained(d, mesh=workload.one_device_mesh())
  return pr, patches, model, params


def _decode_only(engines, reqs, n: int, reps: int) -> dict:
  """Decode-only tokens/s of each engine, its n-token and 1-token calls interleaved."""
  from acformer_jax.benchmarking import timing, torch_compare as tc  # pylint: disable=import-outside-toplevel
  gen = lambda e, m: lambda: e.generate(reqs, max_new_tokens=m, eos_token_id=-1)  # noqa: E731
  fns = {f"{k}_{m}": gen(e, m) for k, e in engines.items() for m in (n, 1)}
  med = {k: v["median_s"] for k, v in timing.interleaved(fns, reps=reps, warmup=1).items()}
  return {k: tc.decode_only_tokens_per_s(len(reqs), n, med[f"{k}_{n}"], med[f"{k}_1"])
          for k in engines}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default="/tmp/decode_layer_copies")
  args = ap.parse_args()
  bench.apply_xla_flags(bench.CPU_XLA_FLAGS)  # as `bench torch`
  from acformer_jax.benchmarking import hlo_ops, op_profile as op, torch_compare as tc  # pylint: disable=import-outside-toplevel
  from acformer_jax.inference.engine import Engine, Request  # pylint: disable=import-outside-toplevel
  pr, patches, model, params = _model_and_params()
  variants = {"scan": model,
              "unrolled": type(model)(dataclasses.replace(model.config, scan_layers=False))}
  n = pr["new_tokens"]
  for b in [int(x) for x in args.batches.split(",") if x.strip()]:
    ids, _, pix = tc.make_data(pr, patches, b, pr["prompt"], seed=1)
    reqs = [Request(list(map(int, ids[i])), pix[i]) for i in range(b)]
    engines = {k: Engine(m, params, batch_size=b, bucket_multiple=8) for k, m in variants.items()}
    tokens = {k: [r.tokens for r in e.generate(reqs, max_new_tokens=n, eos_token_id=-1)]
              for k, e in engines.items()}
    if tokens["scan"] != tokens["unrolled"]:
      raise SystemExit("the variants generate different tokens")
    rate = _decode_only(engines, reqs, n, args.reps)
    for k, e in engines.items():
      texts = {}
      with op.capture_hlo(e.programs, "decode", texts):
        events, _ = op.trace_jax(lambda e=e: e.generate(reqs, max_new_tokens=n, eos_token_id=-1),
                                 os.path.join(args.out, f"{k}_b{b}"))
      br = op.jax_breakdown(events, {m: hlo_ops.hlo_op_table(t) for m, t in texts.items()}, per=n - 1)
      print(f"batch {b}, {k}: decode-only {rate[k]:.1f} tok/s\n"
            + op.table({k: op.with_wall(br, br["span_s"])}) + "\n" + op.top_table({k: br}),
            flush=True)


if __name__ == "__main__":
  main()

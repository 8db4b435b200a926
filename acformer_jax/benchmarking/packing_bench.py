"""``bench packing``: packed vs padded rows and AcFormer-145 vs MLP-576, stage 1 and 2.

One run times, interleaved, the trainer's real step (``trainer/builder.py``) on batches drawn
from the documented length profile (``length_profile.py``) at the bench scale of
``configs/bench_packing.py``: stage 1 packed (both connectors) and stage 2 packed and padded
(both connectors). Every variant of a stage sees the same samples (same texts, images and
order); only the connector's visual tokens and the row layout differ. It reports real
tokens/s (``segment_ids > 0``) and real samples/s, each ratio next to its FLOP-ideal ratio
(``trainer/flops.real_step_flops`` of the timed batches), and a FLOP-model sweep of the 7B
recipe over the profile's mean text length.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from acformer_jax import batch as batch_lib
from acformer_jax import config as config_lib
from acformer_jax.benchmarking import length_profile as lp
from acformer_jax.benchmarking import timing, workload
from acformer_jax.data import packing
from acformer_jax.trainer import experiment
from acformer_jax.trainer import flops as flops_lib

TARGETS = {"stage1_acformer_over_mlp": 2.23, "stage2_fraction_of_ideal": 0.90,
           "stage2_packed_over_padded": 2.5}


def variants(b: Dict) -> List[Tuple[str, str]]:
  """``[(recipe preset, connector at bench scale)]`` from ``bench.variants``."""
  out = []
  for item in str(b["variants"]).split(","):
    name, _, conn = item.strip().partition("=")
    if (1, name) not in experiment.PACKING or not conn:
      raise ValueError(f"bench.variants item {item!r}: expected <recipe preset>=<connector>, "
                       f"presets {sorted({k for _, k in experiment.PACKING})}")
    out.append((name, conn))
  return out


def make_samples(mc: config_lib.ModelConfig, stage: int, n: int, *, length_scale: float,
                 row_length: int, seed: int, text_scale: float = 1.0) -> List[Dict]:
  """``n`` samples of the stage's profile with every text length times ``length_scale``:
  ``[BOS, image x Nv (if any), text]``, the last 60% of the text supervised. The texts
  depend only on ``seed``, so every connector gets the same samples."""
  text, has_image = lp.sample_texts(lp.PROFILES[stage], n, seed, text_scale)
  text = np.maximum(np.rint(text * length_scale), 2).astype(int)
  nv, v = config_lib.num_visual_tokens(mc), mc.llm.vocab_size
  rng = np.random.default_rng(seed + 1)
  s = mc.vision.image_size
  pool = [rng.standard_normal((s, s, 3), dtype=np.float32) for _ in range(4)]
  out = []
  for i, (t, im) in enumerate(zip(text, has_image)):
    words = rng.integers(3, v, size=t - 1, dtype=np.int32)
    ids = np.concatenate([[mc.llm.bos_token_id], [mc.image_token_id] * (nv if im else 0), words])
    ids = ids[:row_length].astype(np.int32)
    labels = np.full_like(ids, batch_lib.IGNORE_INDEX)
    first = len(ids) - max(1, int(0.6 * (t - 1)))
    labels[first:] = ids[first:]
    out.append({"input_ids": ids, "labels": labels, "image": pool[i % len(pool)] if im else None})
  return out


def make_batches(samples: Sequence[Dict], shape: batch_lib.BatchShape, *, packed: bool,
                 count: int) -> List[Dict[str, np.ndarray]]:
  """``count`` host batches packed by ``data/packing.py`` (padded: one sample per row)."""
  spec = (packing.PackSpec(shape.length, shape.images_per_row, 64) if packed
          else packing.PackSpec(shape.length, 1, 0, one_per_row=True))
  stream, carried, out = iter(samples), [], []
  while len(out) < count:
    rows, carried, exhausted = packing.pack_batch(carried, stream, shape.rows, spec)
    if exhausted:
      raise ValueError(f"{len(samples)} samples fill only {len(out)} batches of {shape}")
    out.append(packing.collate(rows, shape, pad_id=0))
  return out


def stage_config(cfg, stage: int, connector: str, *, rows: int, row_length: int, images: int,
                 packed: bool):
  c = workload.variant_config(cfg, connector, max_length=row_length,
                              images_per_row=images if packed else 1, global_batch=rows)
  c.data.packing = packed
  (experiment.stage1 if stage == 1 else experiment.stage2)(c)
  c.train.global_batch_size = rows  # the recipe helpers reset it
  return c


def _entry(ex, batches) -> Dict:
  real = [ex.batch_flops(b).total for b in batches]
  return {"samples_per_step": float(np.mean([batch_lib.samples(b) for b in batches])),
          "real_tokens_per_step": float(np.mean([batch_lib.real_tokens(b) for b in batches])),
          "real_images_per_step": float(np.mean([batch_lib.real_images(b) for b in batches])),
          "token_slots": ex.batch_shape.rows * ex.batch_shape.length,
          "image_slots": ex.batch_shape.rows * ex.batch_shape.images_per_row,
          "real_flops": float(np.mean(real)), "padded_flops": ex.padded_flops.total}


def flops_per_sample_7b(stage: int, preset: str, text_scale: float = 1.0, n: int = 4000) -> float:
  """Mean real model FLOPs per sample of the 7B recipe on the (unscaled) profile."""
  mc = config_lib.ModelConfig(vision=experiment.clip_vit_l336(), llm=experiment.vicuna("7b"),
                              connector=config_lib.ConnectorConfig(**experiment.CONNECTOR_PRESETS[preset]))
  text, img = lp.sample_texts(lp.PROFILES[stage], n, 0, text_scale)
  lengths = lp.llm_lengths(text, img, config_lib.num_visual_tokens(mc), experiment.PACKED_ROWS)
  f = flops_lib.real_step_flops(mc, tokens=float(lengths.sum()), images=float(img.sum()),
                                attention_pairs=float(np.sum(lengths.astype(float) ** 2)),
                                head_tokens=float(lengths.sum()), llm_trainable=stage == 2)
  return f.total / n


def sweep_7b(scales: Sequence[float], presets: Sequence[str], n: int = 3000) -> List[Dict]:
  """FLOP-model predictions (not timings) of the 7B stage-2 recipe per mean-text scale."""
  out = []
  for s in scales:
    text, img = lp.sample_texts(lp.PROFILES[2], n, 0, s)
    row = {"text_scale": s, "mean_text_tokens": float(text.mean())}
    per = {}
    for p in presets:
      m = experiment.PACKING[(2, p)][0]
      mc = config_lib.ModelConfig(vision=experiment.clip_vit_l336(), llm=experiment.vicuna("7b"),
                                  connector=config_lib.ConnectorConfig(**experiment.CONNECTOR_PRESETS[p]))
      lengths = lp.llm_lengths(text, img, config_lib.num_visual_tokens(mc), experiment.PACKED_ROWS)
      st = lp.pack_stats(lengths, img, rows=32, max_length=experiment.PACKED_ROWS, max_images=m)
      pad_packed = flops_lib.train_step_flops(mc, 1, experiment.PACKED_ROWS, llm_trainable=True,
                                              images_per_row=m).total
      pad_one = flops_lib.train_step_flops(mc, 1, experiment.PACKED_ROWS, llm_trainable=True).total
      per[p] = {"samples_per_row": st["samples_per_row"], "token_efficiency": st["token_efficiency"],
                "padded_token_efficiency": float(lengths.mean() / experiment.PACKED_ROWS),
                "samples_per_padded_flop": st["samples_per_row"] / pad_packed,
                "packed_over_padded_tokens": (st["token_efficiency"] / pad_packed)
                                             / (float(lengths.mean()) / experiment.PACKED_ROWS / pad_one),
                "flops_per_sample": flops_per_sample_7b(2, p, s, n)}
    row["connectors"] = per
    if len(presets) >= 2:
      a, b = presets[0], presets[1]
      row["ideal_ratio"] = per[b]["flops_per_sample"] / per[a]["flops_per_sample"]
      row["predicted_ratio"] = per[a]["samples_per_padded_flop"] / per[b]["samples_per_padded_flop"]
    out.append(row)
  return out


def run_packing(cfg, *, reps: int, warmup: int, quiet_wait_s: float = 0.0,
                log: Callable[[str], None] = print) -> Dict:
  """Builds, times (interleaved) and compares every variant; see the module docstring."""
  b = workload.bench_section(cfg)
  vs = variants(b)
  row_len, scale, seed = int(b["row_length"]), float(b["length_scale"]), int(b["seed"])
  base = workload.model_config(cfg)
  layouts = [(int(x.strip()[1]), x.strip().endswith("packed"))
             for x in str(b.get("layouts", "s1_packed,s2_packed,s2_padded")).split(",")]
  runs, info, shared = {}, {}, {}
  for stage, packed in layouts:
    rows = int(b[f"rows_stage{stage}"])
    for preset, conn in vs:
      mc = workload.variant(base, conn)
      images = experiment.PACKING[(stage, preset)][0]
      c = stage_config(cfg, stage, conn, rows=rows, row_length=row_len, images=images, packed=packed)
      samples = make_samples(mc, stage, 64 * rows * (reps + warmup + 1), length_scale=scale,
                             row_length=row_len, seed=seed + stage)
      shape = batch_lib.BatchShape(rows, row_len, images if packed else 1, mc.vision.image_size)
      batches = make_batches(samples, shape, packed=packed, count=reps + warmup)
      bundle = workload.build_step(c, batches[0], shared=shared.get(stage))
      shared.setdefault(stage, {k: bundle.state.params[k] for k in ("vision", "llm")})
      dev = [batch_lib.to_device(x, bundle.experiment.mesh) for x in batches]
      key = f"s{stage}_{'packed' if packed else 'padded'}_{preset}"
      runs[key] = _runner(bundle, dev)
      info[key] = {"stage": stage, "layout": "packed" if packed else "padded", "preset": preset,
                   "connector": conn, "visual_tokens": config_lib.num_visual_tokens(mc),
                   "rows": rows, "row_length": row_len, "images_per_row": shape.images_per_row,
                   "compile_s": bundle.compile_s, **_entry(bundle.experiment, batches)}
      log(f"{key}: {info[key]['samples_per_step']:.1f} samples, "
          f"{info[key]['real_tokens_per_step']:.0f}/{info[key]['token_slots']} real tokens per "
          f"step; compiled in {bundle.compile_s:.1f} s")
  times = timing.interleaved(runs, reps=reps, warmup=warmup, log=log, quiet_wait_s=quiet_wait_s)
  for key, e in info.items():
    t = times[key]["median_s"]
    e.update(step_s=t, real_tokens_per_s=e["real_tokens_per_step"] / t,
             real_samples_per_s=e["samples_per_step"] / t, real_flops_per_s=e["real_flops"] / t,
             token_efficiency=e["real_tokens_per_step"] / e["token_slots"],
             image_efficiency=e["real_images_per_step"] / e["image_slots"], timing=times[key])
  return {"command": "packing", "reps": reps, "warmup": warmup, "variants": info,
          "ratios": ratios(info, [p for p, _ in vs]),
          "sweep_7b": sweep_7b([float(x) for x in str(b["text_sweep"]).split(",") if x.strip()],
                               [p for p, _ in vs])}


def _runner(bundle, dev_batches):
  state = {"i": 0}

  def run():
    bundle.batch = dev_batches[state["i"] % len(dev_batches)]
    state["i"] += 1
    return bundle.run()
  return run


def ratios(info: Dict[str, Dict], presets: Sequence[str]) -> List[Dict]:
  """Side-by-side ratios with their FLOP-ideal values and the issue's targets."""
  out = []
  if len(presets) >= 2:
    ac, mlp = presets[0], presets[1]
    for stage in (1, 2):
      if f"s{stage}_packed_{ac}" not in info:
        continue
      a, m = info[f"s{stage}_packed_{ac}"], info[f"s{stage}_packed_{mlp}"]
      ideal = (m["real_flops"] / m["samples_per_step"]) / (a["real_flops"] / a["samples_per_step"])
      got = a["real_samples_per_s"] / m["real_samples_per_s"]
      r = {"name": f"stage {stage} packed: {ac} / {mlp} real samples/s", "measured": got,
           "flop_ideal": ideal, "fraction_of_ideal": got / ideal,
           "flop_ideal_7b": flops_per_sample_7b(stage, mlp) / flops_per_sample_7b(stage, ac)}
      if stage == 1:
        r.update(target=f">= {TARGETS['stage1_acformer_over_mlp']}x",
                 met=got >= TARGETS["stage1_acformer_over_mlp"])
      else:
        r.update(target=f">= {TARGETS['stage2_fraction_of_ideal']:.0%} of ideal",
                 met=got / ideal >= TARGETS["stage2_fraction_of_ideal"])
      out.append(r)
  for i, p in enumerate(presets):
    if f"s2_padded_{p}" not in info or f"s2_packed_{p}" not in info:
      continue
    pk, pd = info[f"s2_packed_{p}"], info[f"s2_padded_{p}"]
    got = pk["real_tokens_per_s"] / pd["real_tokens_per_s"]
    # FLOP-ideal: real tokens per PADDED FLOP (what static shapes make the hardware do).
    ideal = (pk["real_tokens_per_step"] / pk["padded_flops"]) / (pd["real_tokens_per_step"] / pd["padded_flops"])
    r = {"name": f"stage 2 {p}: packed / padded real tokens/s", "measured": got,
         "flop_ideal": ideal, "fraction_of_ideal": got / ideal}
    if i == 0:  # the target is AcFormer's; the baseline's is reported alongside
      r.update(target=f">= {TARGETS['stage2_packed_over_padded']}x",
               met=got >= TARGETS["stage2_packed_over_padded"])
    out.append(r)
  return out


COLS = (("variant", "key", "{}"), ("Nv", "visual_tokens", "{}"),
        ("rows x len", "shape", "{}"), ("M", "images_per_row", "{}"),
        ("samples", "samples_per_step", "{:.1f}"), ("tok real", "token_efficiency", "{:.0%}"),
        ("img real", "image_efficiency", "{:.0%}"), ("step s", "step_s", "{:.3f}"),
        ("real tok/s", "real_tokens_per_s", "{:.0f}"), ("samples/s", "real_samples_per_s", "{:.2f}"),
        ("real GFLOP", "real_gflops", "{:.1f}"), ("padded GFLOP", "padded_gflops", "{:.1f}"),
        ("real GFLOP/s", "real_gflops_per_s", "{:.1f}"))


def format_result(res: Dict) -> str:
  """The run as plain-text tables: variants, ratios vs FLOP-ideal and targets, 7B sweep."""
  from acformer_jax.benchmarking import speed  # pylint: disable=import-outside-toplevel
  rows = [{**e, "key": k, "shape": f"{e['rows']}x{e['row_length']}",
           "real_gflops": e["real_flops"] / 1e9, "padded_gflops": e["padded_flops"] / 1e9,
           "real_gflops_per_s": e["real_flops_per_s"] / 1e9} for k, e in res["variants"].items()]
  lines = [speed.table(rows, COLS), "",
           f"{'ratio':<56} {'measured':>9} {'FLOP-ideal':>10} {'of ideal':>9} {'7B ideal':>9}  target"]
  for r in res["ratios"]:
    seven = f"{r['flop_ideal_7b']:.2f}x" if "flop_ideal_7b" in r else "-"
    lines.append(f"{r['name']:<56} {r['measured']:>8.2f}x {r['flop_ideal']:>9.2f}x "
                 f"{r['fraction_of_ideal']:>9.0%} {seven:>9}  " + (
                     f"{r['target']} {'MET' if r['met'] else 'NOT MET'}" if "target" in r else "-"))
  lines += ["", "7B stage-2 recipe vs mean text length (FLOP model on the profile, not timed):",
            "  per connector: samples per 2048-row, real tokens / slots, packed:padded real tokens "
            "per padded FLOP;", "  AcFormer/MLP samples per sample-FLOP (ideal) and per padded "
            "FLOP of packed rows (predicted)",
            f"{'text x':>6} {'text tok':>8}  " + "  ".join(
                f"{p:>36}" for p in res["sweep_7b"][0]["connectors"])
            + f"  {'ideal':>6} {'predicted':>9}"]
  for w in res["sweep_7b"]:
    cells = "  ".join(f"{c['samples_per_row']:>16.2f} {c['token_efficiency']:>7.0%} "
                      f"{c['packed_over_padded_tokens']:>10.2f}x" for c in w["connectors"].values())
    lines.append(f"{w['text_scale']:>6g} {w['mean_text_tokens']:>8.0f}  {cells}  "
                 f"{w.get('ideal_ratio', 0):>5.2f}x {w.get('predicted_ratio', 0):>8.2f}x")
  return "\n".join(lines)

"""``bench torch``: our stack against transformers on the same LLaVA-1.5 (MLP) model.

One process builds a random ``LlavaForConditionalGeneration`` (sdpa attention, float32),
saves it and converts it with ``acformer_jax.load_pretrained`` (identical weights; the
logits are compared first), then times, interleaved: a full training step (forward,
backward, global-norm clipping, AdamW; ViT frozen, projector + LLM trained, as LLaVA-1.5
stage 2, spec ``docs/method.md`` 2.2) of each, and greedy decoding (``max_new_tokens`` forced
with EOS disabled) with our ``inference.Engine`` against ``generate`` at each batch size.

Same work on both sides is the headline: both compute the LM head and the loss on the
supervised positions only (ours: ``train.loss_positions``; transformers: its decoder's
hidden states at those positions through ``lm_head``, the same mean cross-entropy). The
stock transformers step (``labels=``, head on every position) is reported next to it,
labelled as unequal work. Decode-only tokens/s = ``batch x (n - 1)`` new tokens over
``time(generate n) - time(generate 1)``: vision, prefill and the first token cancel out.
Presets: ``small`` is the LLaVA step of ``docs/environment.md`` section 4; ``tiny`` is for tests.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Dict

import numpy as np

PRESETS = {
    # docs/environment.md 4: CLIP 336/14 (577 tokens), 256 wide, 4 layers, 4 heads, MLP 1024;
    # LLaMA 512 wide, 4 layers, 8 heads, MLP 1376, vocab 32000; batch 4 x 704 positions.
    "small": dict(image=336, v_hidden=256, v_layers=4, v_heads=4, v_mlp=1024, hidden=512,
                  layers=4, heads=8, mlp=1376, vocab=32000, batch=4, text=127, prompt=16,
                  new_tokens=32),
    "tiny": dict(image=56, v_hidden=32, v_layers=2, v_heads=4, v_mlp=64, hidden=64, layers=2,
                 heads=4, mlp=128, vocab=256, batch=2, text=8, prompt=4, new_tokens=4),
}


def hf_model(pr: Dict, seed: int = 0):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  vision = transformers.CLIPVisionConfig(
      image_size=pr["image"], patch_size=14, hidden_size=pr["v_hidden"],
      intermediate_size=pr["v_mlp"], num_hidden_layers=pr["v_layers"],
      num_attention_heads=pr["v_heads"])
  text = transformers.LlamaConfig(
      vocab_size=pr["vocab"], hidden_size=pr["hidden"], intermediate_size=pr["mlp"],
      num_hidden_layers=pr["layers"], num_attention_heads=pr["heads"],
      num_key_value_heads=pr["heads"], max_position_embeddings=2048, rms_norm_eps=1e-5,
      bos_token_id=1, eos_token_id=2, pad_token_id=0)
  patches = (pr["image"] // 14) ** 2
  cfg = transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=pr["vocab"] - 1,
      projector_hidden_act="gelu", vision_feature_layer=-2,
      vision_feature_select_strategy="default", image_seq_length=patches)
  cfg._attn_implementation = "sdpa"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  return transformers.LlavaForConditionalGeneration(cfg).float(), patches


def make_data(pr: Dict, patches: int, batch: int, text: int, seed: int = 0):
  """``(ids, labels, pixels NHWC)``: ``[BOS, image x patches, text]``, text supervised."""
  rng = np.random.default_rng(seed)
  ids = np.concatenate([np.ones((batch, 1), np.int64),
                        np.full((batch, patches), pr["vocab"] - 1, np.int64),
                        rng.integers(3, pr["vocab"] - 1, (batch, text))], axis=1)
  labels = ids.copy()
  labels[:, :1 + patches] = -100
  pixels = rng.standard_normal((batch, pr["image"], pr["image"], 3)).astype(np.float32)
  return ids, labels, pixels


def _torch_train_step(model, ids, labels, pixels, head: str = "supervised"):
  """A transformers train step. ``head="supervised"``: LM head + cross-entropy on the
  supervised positions only (the same work as ours); ``"all"``: the stock ``labels=`` loss
  (logits for every position)."""
  import torch  # pylint: disable=import-outside-toplevel
  model.model.vision_tower.requires_grad_(False)
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  t_ids, t_lab = torch.from_numpy(ids), torch.from_numpy(labels)
  t_pix = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
  mask = torch.ones_like(t_ids)
  model.train()

  sup = t_lab[:, 1:] != -100  # position t predicts label t + 1

  def loss_fn():
    if head == "all":
      return model(input_ids=t_ids, pixel_values=t_pix, attention_mask=mask, labels=t_lab).loss
    hidden = model.model(input_ids=t_ids, pixel_values=t_pix, attention_mask=mask).last_hidden_state
    logits = model.lm_head(hidden[:, :-1][sup]).float()
    return torch.nn.functional.cross_entropy(logits, t_lab[:, 1:][sup])

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.detach().item()
  return step


def _experiment(mc, batch: int, seq_len: int, text_len: int):
  """Our step's settings: LLaVA-1.5 stage 2 (AdamW, warmup 0, clip 1), and
  ``loss_positions`` (the LM head only on the ``text_len`` supervised positions of each row:
  the same rows as the torch side's head, so both do the same work)."""
  from acformer_jax.benchmarking import workload  # pylint: disable=import-outside-toplevel
  c = workload.config_for_model(mc, max_length=seq_len, global_batch=batch, stage=2, steps=1000,
                                loss_positions=text_len)
  c.train.optimizer.update(lr=2e-5, warmup_ratio=0.0, weight_decay=0.0, clip_norm=1.0)
  return c


def _logit_diff(hf, model, params, ids, pixels) -> float:
  import torch  # pylint: disable=import-outside-toplevel
  hf.eval()
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids[:1]),
             pixel_values=torch.from_numpy(pixels[:1]).permute(0, 3, 1, 2).contiguous()).logits
  import jax  # pylint: disable=import-outside-toplevel
  ours = jax.jit(model.apply)({"params": params}, pixels[:1], ids[:1].astype(np.int32))
  return float(np.max(np.abs(np.asarray(ours) - ref.numpy())))


def decode_only_tokens_per_s(batch: int, n: int, secs_n: float, secs_1: float) -> float:
  """``batch x (n - 1)`` tokens over the time an ``n``-token call takes beyond a 1-token call
  (vision, prefill and the first token cancel); NaN where that difference is not positive."""
  return batch * (n - 1) / (secs_n - secs_1) if n > 1 and secs_n > secs_1 else float("nan")


def _profile_train(ours, theirs, directory: str) -> Dict:
  """One traced train step per side, by op category (:mod:`op_profile`)."""
  from acformer_jax.benchmarking import hlo_ops, op_profile as op  # pylint: disable=import-outside-toplevel
  text = ours.compiled.as_text()
  events, wall = op.trace_jax(ours.run, op.save_hlo(os.path.join(directory, "jax_train"), [text]))
  jax_b = op.with_wall(op.jax_breakdown(events, {hlo_ops.module_name(text): hlo_ops.hlo_op_table(text)}),
                       wall)
  events, wall = op.trace_torch(theirs)
  return {"jax": jax_b, "torch": op.with_wall(op.torch_breakdown(events), wall)}


def _profile_decode(engine, jax_gen, torch_gen, n: int, directory: str, batch: int) -> Dict:
  """One decode step (producing ``batch`` tokens) per side: ours from the ops of the decode
  loop (wall: its first op to its last), transformers' as ``generate(n)`` minus
  ``generate(1)`` over ``n - 1`` steps (prefill and the first token cancel)."""
  from acformer_jax.benchmarking import hlo_ops, op_profile as op  # pylint: disable=import-outside-toplevel
  if n < 2:
    raise ValueError("profiling a decode step needs new_tokens >= 2")
  texts = {}
  trace_dir = os.path.join(directory, f"jax_decode_b{batch}")
  with op.capture_hlo(engine.programs, "decode", texts):
    events, _ = op.trace_jax(jax_gen, trace_dir)
  op.save_hlo(trace_dir, texts.values())
  tables = {name: hlo_ops.hlo_op_table(t) for name, t in texts.items()}
  jax_b = op.jax_breakdown(events, tables, per=n - 1)
  jax_b = op.with_wall(jax_b, jax_b["span_s"])
  (full, wall_n), (one, wall_1) = op.trace_torch(torch_gen), op.trace_torch(lambda: torch_gen(1))
  torch_b = op.subtract(op.with_wall(op.torch_breakdown(full), wall_n),
                        op.with_wall(op.torch_breakdown(one), wall_1), n - 1)
  return {"jax": jax_b, "torch": op.with_wall(torch_b, torch_b["wall_s"])}


def _report_profile(prof: Dict, directory: str) -> None:
  from acformer_jax.benchmarking import op_profile as op  # pylint: disable=import-outside-toplevel
  parts = ["train step (one step, op self time; share of all ops)",
           op.table({"jax": prof["train"]["jax"], "torch": prof["train"]["torch"]}),
           op.top_table({"jax": prof["train"]["jax"], "torch": prof["train"]["torch"]})]
  for d in prof.get("decode", []):
    parts += [f"decode step, batch {d['batch']} (per step of the loop)",
              op.table({"jax": d["jax"], "torch": d["torch"]}),
              op.top_table({"jax": d["jax"], "torch": d["torch"]})]
  text = "\n\n".join(parts)
  print(text)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "profile.txt"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(directory, "profile.json"), "w") as f:
    json.dump(prof, f, indent=1, default=float)


def run(args) -> Dict:
  import torch  # pylint: disable=import-outside-toplevel
  from acformer_jax.benchmarking import timing, workload  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion.pretrained import load_pretrained  # pylint: disable=import-outside-toplevel
  from acformer_jax.inference.engine import Engine, Request  # pylint: disable=import-outside-toplevel

  pr = PRESETS[args.preset]
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  log = lambda m: print(m, flush=True)  # noqa: E731
  hf, patches = hf_model(pr)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    model, params = load_pretrained(d, mesh=workload.one_device_mesh())
  mc = dataclasses.replace(model.config, dtype="float32", scan_layers=False, remat_policy="none")
  ids, labels, pixels = make_data(pr, patches, pr["batch"], pr["text"])
  diff = _logit_diff(hf, model, params, ids, pixels)
  log(f"converted: max |logit diff| {diff:.2e}")
  if not diff < 1e-2:
    raise ValueError(f"the converted model disagrees with transformers (max |logit diff| {diff})")
  from acformer_jax import batch as batch_lib  # pylint: disable=import-outside-toplevel
  batch_np = batch_lib.unpacked(pixels, ids, labels)
  ours = workload.build_step(_experiment(mc, pr["batch"], ids.shape[1], pr["text"]), batch_np,
                             params=params)
  initial = {k: v.detach().clone() for k, v in hf.state_dict().items()}
  theirs = _torch_train_step(hf, ids, labels, pixels, head="supervised")
  stock = _torch_train_step(hf, ids, labels, pixels, head="all")
  res = timing.interleaved({"jax_train": ours.run, "torch_train": theirs, "torch_stock": stock},
                           reps=5 if args.reps is None else int(args.reps), warmup=1, log=log, quiet_wait_s=args.quiet_wait)
  med = {k: v["median_s"] for k, v in res.items()}
  out = {"command": "torch", "preset": args.preset, "torch_threads": torch.get_num_threads(),
         "params": int(sum(p.numel() for p in hf.parameters())), "max_logit_diff": diff,
         "train": {"batch": pr["batch"], "seq_len": int(ids.shape[1]),
                   "head_positions_per_row": pr["text"], "jax": res["jax_train"],
                   "torch": res["torch_train"], "torch_stock_full_head": res["torch_stock"],
                   # headline: the same work on both sides (head on supervised rows)
                   "speedup": med["torch_train"] / med["jax_train"],
                   # each side's best available setting (torch: the faster of its two steps)
                   "speedup_best_each": min(med["torch_train"], med["torch_stock"]) / med["jax_train"],
                   # unequal work: stock transformers computes the head on every position
                   "speedup_vs_stock_full_head": med["torch_stock"] / med["jax_train"]}}
  prof = {} if args.profile else None
  if prof is not None:
    prof["train"] = _profile_train(ours, theirs, args.profile)
  del ours
  hf.load_state_dict(initial)  # undo the timed AdamW updates: decode the converted weights
  hf.eval()
  n_new = pr["new_tokens"]
  out["decode"] = []
  for b in [int(x) for x in args.decode_batches.split(",") if x.strip()]:
    p_ids, _, p_pix = make_data(pr, patches, b, pr["prompt"], seed=1)
    engine = Engine(model, params, batch_size=b, bucket_multiple=8)
    reqs = [Request(list(map(int, p_ids[i])), p_pix[i]) for i in range(b)]
    t_ids = torch.from_numpy(p_ids)
    t_pix = torch.from_numpy(p_pix).permute(0, 3, 1, 2).contiguous()
    got = {}

    def jax_gen(n=n_new):
      got["jax", n] = engine.generate(reqs, max_new_tokens=n, eos_token_id=-1)

    def torch_gen(n=n_new):
      with torch.no_grad():
        got["torch", n] = hf.generate(input_ids=t_ids, pixel_values=t_pix,
                                      attention_mask=torch.ones_like(t_ids), do_sample=False,
                                      max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    r = timing.interleaved({"jax": jax_gen, "torch": torch_gen, "jax_1": lambda: jax_gen(1),
                            "torch_1": lambda: torch_gen(1)}, reps=args.decode_reps,
                           warmup=1, log=log, quiet_wait_s=args.quiet_wait)
    if prof is not None:
      prof.setdefault("decode", []).append(
          {"batch": b, **_profile_decode(engine, jax_gen, torch_gen, n_new, args.profile, b)})
    ours_tok = np.array([x.tokens for x in got["jax", n_new]])
    ref_tok = got["torch", n_new][:, p_ids.shape[1]:].numpy()
    med = {k: v["median_s"] for k, v in r.items()}
    decode_only = {s: decode_only_tokens_per_s(b, n_new, med[s], med[s + "_1"])
                   for s in ("jax", "torch")}
    out["decode"].append({
        "batch": b, "prompt_len": int(p_ids.shape[1]), "new_tokens": n_new,
        "jax_tokens_per_s": b * n_new / med["jax"],
        "torch_tokens_per_s": b * n_new / med["torch"],
        "speedup": med["torch"] / med["jax"],
        "jax_decode_only_tokens_per_s": decode_only["jax"],
        "torch_decode_only_tokens_per_s": decode_only["torch"],
        "decode_only_speedup": decode_only["jax"] / decode_only["torch"],
        "greedy_token_agreement": float(np.mean(ours_tok == ref_tok)),
        "jax": r["jax"], "torch": r["torch"], "jax_1_token": r["jax_1"],
        "torch_1_token": r["torch_1"]})
  if prof is not None:
    out["profile"] = prof
    _report_profile(prof, args.profile)
  tr = out["train"]
  print(f"train step ({pr['batch']} x {ids.shape[1]}), same work (LM head on the {pr['text']} "
        f"supervised positions per row on both sides): jax {tr['jax']['median_s']:.3f} s, "
        f"torch {tr['torch']['median_s']:.3f} s -> jax {tr['speedup']:.2f}x")
  print(f"  each side's best setting: jax {tr['speedup_best_each']:.2f}x; unequal work, stock "
        f"transformers (head on all {ids.shape[1]} positions) "
        f"{tr['torch_stock_full_head']['median_s']:.3f} s -> jax {tr['speedup_vs_stock_full_head']:.2f}x")
  for d in out["decode"]:
    print(f"greedy decode batch {d['batch']}: end-to-end jax {d['jax_tokens_per_s']:.1f} tok/s, "
          f"torch {d['torch_tokens_per_s']:.1f} tok/s -> jax {d['speedup']:.2f}x; decode only "
          f"jax {d['jax_decode_only_tokens_per_s']:.1f} tok/s, torch "
          f"{d['torch_decode_only_tokens_per_s']:.1f} tok/s -> jax {d['decode_only_speedup']:.2f}x "
          f"(token agreement {d['greedy_token_agreement']:.0%})")
  return out

"""Fast recipe search for the DINOv2 demo: train the connector + LLM on tower outputs computed once.

  python benchmarks/demo_cached_recipe.py [--connector acformer] [--llm_layers 2] \
      [--stage1_steps 300] [--stage2_steps 400] [--eval_every 200] [--followups 0]

The frozen DINOv2-S/14 (``.assets/dinov2_s14``, ``launch/setup.sh``) runs once over every
scene; both stages then train the connector and the random LLM of ``configs/demo_stage{1,2}.py``
(same model, optimizer, schedule and samples per step as their packed rows hold) on those
outputs, one sample per padded row, with the trainer's loss. Evaluation answers the 500
held-out questions of ``qa_SIZE`` greedily (no KV cache) and scores them with the demo scorer;
it also prints the existence questions' ROC AUC of the first answer token's yes-minus-no logit,
which shows whether the model separates the two answers even where it always says one of them.

This is a search tool, not the trainer: no packing, no checkpoints, no sharding. A recipe it
finds must be confirmed with ``python -m acformer_jax.train`` (docs/training.md "DINOv2 demo").
Diagnostics for what limits the LLM:

* ``--followups N`` replaces the training samples' second turn with N balanced existence turns
  (``scenes.followup``).
* ``--oracle`` skips the tower: each patch under an object gets that object's colour, shape and
  size as one-hot entries (plus small noise), every other token noise; the visual input is then
  as clean as it can be, and what is not learnt is the LLM's limit.
* ``--text_steps N`` first trains the LLM alone on the scenes written out as text (the caption,
  then the question) and evaluates it on the held-out scenes written the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from acformer_jax import config as config_lib
from acformer_jax.conversion.towers import load_hf_vision
from acformer_jax.data.preprocess import preprocess_image
from acformer_jax.data.templates import IGNORE_INDEX, encode_generation_prompt, tokenize_conversation
from acformer_jax.data.tokenizer import load_encoder
from acformer_jax.demo import recipe, scenes, scoring
from acformer_jax.demo import tokenizer as demo_tokenizer
from acformer_jax.models import towers
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import experiment
from acformer_jax.trainer import loss as loss_lib
from acformer_jax.trainer import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]


def model_config(args) -> config_lib.ModelConfig:
  """The demo's model (``demo/recipe.dinov2``, as ``configs/demo_stage1.py``) with this run's tower and LLM settings."""
  c = experiment.base_config()
  recipe.dinov2(c, args.connector)
  mc = config_lib.model_config_from_dict(c.model.to_dict())
  vision = dataclasses.replace(mc.vision, image_size=args.size, select_layer=args.layer)
  llm = dataclasses.replace(mc.llm, num_layers=args.llm_layers)
  conn = mc.connector
  if args.num_queries:
    conn = dataclasses.replace(conn, num_queries=args.num_queries)
  return dataclasses.replace(mc, vision=vision, llm=llm, connector=conn)


def tower_outputs(samples, mc: config_lib.ModelConfig, params, batch: int = 50):
  """``(features, anchor_attn)`` of the frozen tower (``params``) for every sample's image,
  preprocessed as the training pipeline does."""
  module = towers.build(mc.vision)
  entry = towers.tower(mc.vision.tower)
  fwd = jax.jit(lambda p, x: module.apply({"params": p}, x))
  feats, attn = [], []
  for i in range(0, len(samples), batch):
    x = np.stack([preprocess_image(s["image"], mc.vision.image_size, pad_to_square=True,
                                   mean=entry.image_mean, std=entry.image_std)
                  for s in samples[i:i + batch]])
    f, a = fwd(params, x)
    feats.append(np.asarray(f))
    attn.append(np.asarray(a))
  return np.concatenate(feats), np.concatenate(attn)


def padded(samples, template: str, encoder, mc: config_lib.ModelConfig, has_image: bool = True):
  """Ids, labels and mask ``[N, L]`` of each sample on its own right-padded row."""
  nv = config_lib.num_visual_tokens(mc)
  rows = [tokenize_conversation(s["conversations"], has_image=has_image, template=template,
                                encoder=encoder, num_visual_tokens=nv,
                                image_token_id=mc.image_token_id, max_length=512) for s in samples]
  width = max(len(r.input_ids) for r in rows)
  ids = np.full((len(rows), width), encoder.pad_id, np.int32)
  labels = np.full((len(rows), width), IGNORE_INDEX, np.int32)
  for k, r in enumerate(rows):
    ids[k, :len(r.input_ids)], labels[k, :len(r.labels)] = r.input_ids, r.labels
  return ids, labels, np.arange(width)[None] < np.asarray([len(r.input_ids) for r in rows])[:, None]


def logits_fn(model: MultimodalLM):
  """``(params, features, anchor_attn, ids, mask) -> logits``: the model after the tower."""
  def run(m, feats, attn, ids, mask):
    embeds = m.embed(ids, m.connector(feats, attn))
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    return m.decode(embeds, positions, mask)[0]
  return lambda p, *xs: model.apply({"params": p}, *xs, method=run)


def train_stage(params, data, steps: int, per_step: int, lr: float, fwd, seed: int, on_eval=None,
                eval_every: int = 0):
  """The trainer's optimizer over ``connector`` and ``llm`` (the tower stays frozen), ``steps`` steps."""
  trainable = {k: params[k] for k in ("connector", "llm")}
  frozen = {"vision": params["vision"]}
  tx, _ = optim.make_optimizer({"lr": lr}, steps)
  opt = tx.init(trainable)

  def loss(tp, feats, attn, ids, labels, mask):
    total, count, _ = loss_lib.token_loss(fwd({**frozen, **tp}, feats, attn, ids, mask),
                                          loss_lib.shifted_targets(labels))
    return total / jnp.maximum(count, 1)

  @jax.jit
  def step(tp, opt, *batch):
    value, grads = jax.value_and_grad(loss)(tp, *batch)
    updates, opt = tx.update(grads, opt, tp)
    return optax.apply_updates(tp, updates), opt, value

  rng = np.random.default_rng(seed)
  n = len(data[0])
  order = np.concatenate([rng.permutation(n) for _ in range(steps * per_step // n + 1)])
  losses = []
  for s in range(steps):
    idx = order[s * per_step:(s + 1) * per_step]
    trainable, opt, value = step(trainable, opt, *(a[idx] for a in data))
    losses.append(float(value))
    if on_eval and eval_every and ((s + 1) % eval_every == 0 or s + 1 == steps):
      on_eval(s + 1, {**frozen, **trainable}, float(np.mean(losses[-20:])))
  return {**frozen, **trainable}, float(np.mean(losses[-20:]))


def evaluator(test, feats, attn, encoder, mc, fwd, max_new: int = 5, text: bool = False):
  """``params -> (scores, existence AUC)`` on the held-out questions (``text``: the scenes
  written out, as :func:`as_text`, and no image)."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sp = spm.SentencePieceProcessor(model_file=str(pathlib.Path(demo_tokenizer.build()) / "tokenizer.model"))
  nv = config_lib.num_visual_tokens(mc)
  prompts = [encode_generation_prompt(encoder, (scene_text(s) if text else "")
                                      + s["meta"]["question"] + "\n" + scenes.SHORT_ANSWER_SUFFIX,
                                      has_image=not text, num_visual_tokens=nv,
                                      image_token_id=mc.image_token_id) for s in test]
  lens = np.asarray([len(p) for p in prompts], np.int32)
  ids = np.full((len(test), lens.max() + max_new), encoder.pad_id, np.int32)
  for k, p in enumerate(prompts):
    ids[k, :len(p)] = p
  yes, no = encoder.encode("yes", False)[-1], encoder.encode("no", False)[-1]
  rows = np.arange(len(test))

  @jax.jit
  def greedy(params, ids, lens):
    def body(_, carry):
      ids, lens, first = carry
      logits = fwd(params, feats, attn, ids, jnp.arange(ids.shape[1])[None] < lens[:, None])
      last = logits[rows, lens - 1]
      first = jnp.where(jnp.isnan(first), last[:, yes] - last[:, no], first)
      ids = ids.at[rows, lens].set(jnp.argmax(last, -1).astype(jnp.int32))
      return ids, lens + 1, first
    return jax.lax.fori_loop(0, max_new, body, (ids, lens, jnp.full(len(test), jnp.nan)))

  def run(params):
    out, _, margin = (np.asarray(a) for a in greedy(params, ids, lens))
    answers = []
    for k in rows:
      gen = [int(t) for t in out[k, lens[k]:]]
      gen = gen[:gen.index(encoder.eos_id)] if encoder.eos_id in gen else gen
      answers.append({"question_id": k, "text": sp.decode(gen)})
    truth = [{"question_id": k, "answer": s["meta"]["answer"], "category": s["meta"]["category"]}
             for k, s in enumerate(test)]
    ex = np.asarray([s["meta"]["category"] == "existence" for s in test])
    is_yes = np.asarray([s["meta"]["answer"] == "yes" for s in test])
    pos, neg = margin[ex & is_yes], margin[ex & ~is_yes]
    auc = float(np.mean(pos[:, None] > neg[None, :])) if len(pos) and len(neg) else float("nan")
    return scoring.score_demo(answers, truth), auc
  return run


def oracle_features(samples, like: np.ndarray, grid: int, seed: int = 0) -> np.ndarray:
  """Symbolic tower outputs shaped like ``like`` ``[N, 1 + grid**2, D]`` (see ``--oracle``)."""
  colours, rng = tuple(scenes.COLORS), np.random.default_rng(seed)
  out = 0.05 * rng.normal(size=(len(samples),) + like.shape[1:]).astype(np.float32)
  per_cell = grid // 3
  for k, s in enumerate(samples):
    for o in s["meta"]["objects"]:
      v = np.zeros(like.shape[-1], np.float32)
      v[colours.index(o["color"])] = v[5 + scenes.SHAPES.index(o["shape"])] = 1.0
      v[9] = float(o["size"] == "large")
      r, c = o["cell"]
      for dr in range(per_cell):
        for dc in range(per_cell):
          out[k, 1 + (r * per_cell + dr) * grid + c * per_cell + dc] += v
  return out


def scene_text(sample) -> str:
  """The text that stands for a sample's image in the text-only stage: its caption, a newline."""
  return scenes.caption(sample["meta"]["objects"]) + "\n"


def as_text(samples):
  """Each sample without its image: the scene's caption, then the first question, as text."""
  out = []
  for s in samples:
    conv = s["conversations"]
    question = conv[0]["value"].replace(scenes.IMAGE_TOKEN, "").strip()
    out.append({**s, "conversations": [{"from": "human", "value": scene_text(s) + question}] + conv[1:]})
  return out


def with_followups(samples, n: int, seed: int):
  """Each sample's first turn plus ``n`` balanced existence turns about its scene."""
  rng = np.random.default_rng(seed)
  out = []
  for s in samples:
    conv = s["conversations"][:2]
    for _ in range(n):
      conv = conv + scenes.followup(s["meta"]["objects"], rng)
    out.append({**s, "conversations": conv})
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", type=int, default=84)
  ap.add_argument("--layer", type=int, default=9)
  ap.add_argument("--connector", default="acformer")
  ap.add_argument("--num_queries", type=int, default=0, help="0: the recipe's")
  ap.add_argument("--llm_layers", type=int, default=2)
  ap.add_argument("--num_train", type=int, default=10000, help="scenes per stage")
  ap.add_argument("--stage1_steps", type=int, default=300)
  ap.add_argument("--stage2_steps", type=int, default=400)
  ap.add_argument("--stage1_batch", type=int, default=40, help="captions per step (8 rows of ~5)")
  ap.add_argument("--stage2_batch", type=int, default=32, help="QA samples per step (16 rows of ~2)")
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--followups", type=int, default=-1,
                  help="-1: the dataset's second turns; N >= 0: N existence turns per sample")
  ap.add_argument("--eval_every", type=int, default=200)
  ap.add_argument("--oracle", action="store_true", help="symbolic visual input, no tower")
  ap.add_argument("--text_steps", type=int, default=0, help="a text-only stage first")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  mc = model_config(args)
  encoder = load_encoder(demo_tokenizer.build())
  t0 = time.time()
  gen = lambda task, split, n: list(scenes.generate(task, split, n, image_size=args.size,  # noqa: E731
                                                    with_images=not args.oracle))
  caps, qas, test = gen("caption", "train", args.num_train), gen("qa", "train", args.num_train), gen("qa", "test", 500)
  if args.followups >= 0:
    qas = with_followups(qas, args.followups, args.seed)
  _, vision = load_hf_vision(recipe.DINOV2_DIR, select_layer=mc.vision.select_layer)
  if args.oracle:
    grid = args.size // mc.vision.patch_size
    shape = np.zeros((1, 1 + grid * grid, mc.vision.hidden_size), np.float32)
    attn = lambda x: np.full((len(x), mc.vision.num_heads, grid * grid), 1.0 / grid ** 2, np.float32)  # noqa: E731
    (cf, ca), (qf, qa_), (tf, ta) = ((oracle_features(x, shape, grid, i), attn(x))
                                     for i, x in enumerate((caps, qas, test)))
  else:
    (cf, ca), (qf, qa_), (tf, ta) = (tower_outputs(x, mc, vision) for x in (caps, qas, test))
  print(f"visual inputs for {len(caps) + len(qas) + len(test)} scenes: {time.time() - t0:.0f} s", flush=True)

  model = MultimodalLM(mc)
  nv = config_lib.num_visual_tokens(mc)
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1,) + (args.size,) * 2 + (3,)),
                                        jnp.zeros((1, nv + 2), jnp.int32))["params"])(jax.random.PRNGKey(args.seed))
  params = {**nn.meta.unbox(params), "vision": vision}
  fwd = logits_fn(model)
  evaluate = evaluator(test, jnp.asarray(tf), jnp.asarray(ta), encoder, mc, fwd)

  def reporter(name, run_eval):
    def report(step, p, loss):
      scores, auc = run_eval(p)
      cats = " ".join(f"{c} {v:.0f}" for c, v in sorted(scores["per_category"].items()))
      print(f"{name} step {step}: loss {loss:.3f}  held-out {scores['overall']:.1f}  {cats}  "
            f"existence AUC {auc:.3f}  ({time.time() - t0:.0f} s)", flush=True)
    return report

  if args.text_steps:
    text = as_text(qas)
    blank = lambda n: (np.zeros((n,) + qf.shape[1:], np.float32), np.zeros((n,) + qa_.shape[1:], np.float32))  # noqa: E731
    evaluate_text = evaluator(test, *(jnp.asarray(a) for a in blank(len(test))), encoder, mc, fwd, text=True)
    params, _ = train_stage(params, (*blank(len(text)), *padded(text, "vicuna_v1", encoder, mc, False)),
                            args.text_steps, args.stage2_batch, args.lr, fwd, args.seed + 2,
                            reporter("text-only stage", evaluate_text), args.eval_every)

  if args.stage1_steps:
    params, loss = train_stage(params, (cf, ca, *padded(caps, "plain", encoder, mc)), args.stage1_steps,
                               args.stage1_batch, args.lr, fwd, args.seed)
    print(f"stage 1: {args.stage1_steps} steps, loss {loss:.3f} ({time.time() - t0:.0f} s)", flush=True)
  if args.stage2_steps:
    train_stage(params, (qf, qa_, *padded(qas, "vicuna_v1", encoder, mc)), args.stage2_steps,
                args.stage2_batch, args.lr, fwd, args.seed + 1, reporter("stage 2", evaluate),
                args.eval_every)


if __name__ == "__main__":
  main()

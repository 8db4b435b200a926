"""The sharded, jitted train step (``docs/jax_practices.md`` items 4 and 9; ``docs/method.md`` 2.5).

One ``jax.jit`` with explicit ``in_shardings`` / ``out_shardings`` and the state donated. It
contains the whole forward (frozen ViT, ``select_anchors`` via ``lax.top_k`` inside the
connector, connector, decoder), the masked next-token loss and the AdamW update. The batch
is :mod:`acformer_jax.batch` (packed rows: ``segment_ids``, per-segment ``positions`` and
``image_mask`` go to the model; attention never crosses a segment). The metric ``tokens``
counts real tokens (``segment_ids > 0``), ``images`` real images, ``samples`` segments and
``attention_pairs`` the real attention work (for the real-FLOP count of ``trainer/flops.py``).

Loss: ``sum of token cross-entropies / number of supervised tokens of the GLOBAL batch``
(labels shift by one; ``-100`` ignored). This is the global token mean, not LLaVA's average
of per-device means (docs/method.md 2.5 notes the difference). With ``grad_accum > 1`` the global batch
is cut into microbatches (sample ``i`` goes to microbatch ``i % grad_accum`` so every
device keeps its share of each) and the gradient of the same global token mean is
accumulated in a ``lax.scan``; one optimizer update per step.

``loss_positions`` (``train.loss_positions``) restricts the LM head to the supervised
positions (``trainer/loss.py``). Only the trainable subtree is differentiated (``optim.split_params``): frozen parameters get
no gradients and no optimizer state and pass through bit-identical. Per-step randomness
(``random_pr`` queries) is ``fold_in(key(seed), step)``, so a resumed run draws the same keys.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from acformer_jax import batch as batch_lib
from acformer_jax import sharding as sharding_lib
from acformer_jax.trainer import loss as loss_lib
from acformer_jax.trainer import optim
from acformer_jax.trainer.state import TrainState

IGNORE_INDEX = loss_lib.IGNORE_INDEX


def _microbatches(batch: Mapping[str, jax.Array], n: int) -> Dict[str, jax.Array]:
  """``[B, ...] -> [n, B/n, ...]`` with sample ``i`` in microbatch ``i % n``."""
  def split(x):
    y = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    return jnp.swapaxes(y, 0, 1)
  specs = batch_lib.partition_specs()
  return {k: jax.lax.with_sharding_constraint(split(v), PartitionSpec(None, *specs[k]))
          for k, v in batch.items()}


def attention_pairs(segment_ids: jax.Array) -> jax.Array:
  """Sum over the samples of every row of ``L^2`` (``L`` = the sample's real tokens), float32:
  the attention work of the real tokens (``trainer/flops.real_step_flops``)."""
  t = segment_ids.shape[1]
  counts = jax.vmap(lambda s: jnp.bincount(s, length=t + 1))(segment_ids)[:, 1:]
  return jnp.sum(jnp.square(counts.astype(jnp.float32)))


def all_finite(tree) -> jax.Array:
  """True iff every floating-point leaf of ``tree`` is finite (the NaN guard's view of what a
  checkpoint would hold: the updated trainable parameters and optimizer state)."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: Callable, *,
                    trainable: Sequence[str], grad_accum: int = 1, seed: int = 0,
                    loss_positions: int = 0, loss_impl: str = "full",
                    vocab_chunk: int = 8192) -> Callable:
  """``(state, batch) -> (state, metrics)``, pure and unjitted (see :func:`jit_train_step`).

  ``loss_positions > 0`` runs the LM head on that many supervised positions per row only
  (see :mod:`acformer_jax.trainer.loss`); 0 = all positions. ``loss_impl="tiled"`` computes
  head and loss in ``vocab_chunk`` column tiles (``loss.head_loss``): no ``[B,T,V]`` logits.
  """
  if loss_impl not in loss_lib.LOSS_IMPLS:
    raise ValueError(f"train.loss_impl={loss_impl!r} is not one of {loss_lib.LOSS_IMPLS}")
  if grad_accum < 1:
    raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum}")
  if loss_positions < 0:
    raise ValueError(f"train.loss_positions must be >= 0, got {loss_positions}")

  def forward_loss(params, mb, key):
    kw = dict(positions=mb["positions"], segment_ids=mb["segment_ids"],
              image_mask=mb["image_mask"], rng=key)
    if loss_impl == "tiled":
      positions, targets, dropped = (loss_lib.select_positions(mb["labels"], loss_positions)
                                     if loss_positions else
                                     (None, loss_lib.shifted_targets(mb["labels"]), jnp.zeros((), jnp.int32)))
      with loss_lib.hidden_instead_of_logits(positions):
        hidden = model.apply({"params": params}, mb["images"], mb["input_ids"], **kw)
      s, _, c = loss_lib.head_loss(hidden, loss_lib.head_kernel(params), targets,
                                   chunk=vocab_chunk, dtype=model.config.dtype)
      return s, c, dropped
    if loss_positions:
      positions, targets, dropped = loss_lib.select_positions(mb["labels"], loss_positions)
      with loss_lib.head_on_positions(positions):
        logits = model.apply({"params": params}, mb["images"], mb["input_ids"], **kw)
    else:
      logits = model.apply({"params": params}, mb["images"], mb["input_ids"], **kw)
      targets, dropped = loss_lib.shifted_targets(mb["labels"]), jnp.zeros((), jnp.int32)
    s, _, c = loss_lib.token_loss(logits, targets)
    return s, c, dropped

  def step_fn(state: TrainState, batch: Mapping[str, jax.Array]):
    batch = batch_lib.select(batch)
    train, frozen = optim.split_params(state.params, trainable)
    step_key = jax.random.fold_in(jax.random.key(seed), state.step)
    supervised = jnp.sum(batch["labels"][:, 1:] != IGNORE_INDEX, dtype=jnp.int32)
    if loss_positions:  # tokens beyond the per-row budget are not in the loss
      kept = jnp.sum(loss_lib.select_positions(batch["labels"], loss_positions)[1] != IGNORE_INDEX,
                     dtype=jnp.int32)
    else:
      kept = supervised
    denom = jnp.maximum(kept, 1).astype(jnp.float32)

    def loss_fn(tp, mb, key):
      s, c, d = forward_loss(optim.merge_params(tp, frozen), mb, key)
      return s / denom, (s, c, d)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
      (_, (loss_sum, correct, dropped)), grads = grad_fn(train, batch, step_key)
    else:
      mbs = _microbatches(batch, grad_accum)

      def body(carry, xs):
        g_acc, s_acc, c_acc, d_acc = carry
        mb, i = xs
        (_, (s, c, d)), g = grad_fn(train, mb, jax.random.fold_in(step_key, i))
        return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, c_acc + c, d_acc + d), None

      zeros = jax.tree.map(jnp.zeros_like, train)
      izero = jnp.zeros((), jnp.int32)
      (grads, loss_sum, correct, dropped), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), izero, izero), (mbs, jnp.arange(grad_accum)))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, train)
    train = optax.apply_updates(train, updates)
    loss = loss_sum / denom
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": jnp.asarray(schedule(state.step), jnp.float32),
        "supervised_tokens": supervised,
        "dropped_tokens": dropped,
        "tokens": jnp.sum(batch["segment_ids"] > 0, dtype=jnp.int32),  # real tokens
        "images": jnp.sum(batch["image_mask"], dtype=jnp.int32),      # real images
        "samples": jnp.sum(jnp.max(batch["segment_ids"], axis=1), dtype=jnp.int32),
        "attention_pairs": attention_pairs(batch["segment_ids"]),
        "token_accuracy": correct.astype(jnp.float32) / denom,
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((train, opt_state)),
    }
    new_state = state.replace(step=state.step + 1, params=optim.merge_params(train, frozen),
                              opt_state=opt_state)
    return new_state, metrics

  return step_fn


def jit_train_step(step_fn: Callable, mesh: Mesh, state_shardings,
                   rules=sharding_lib.LOGICAL_AXIS_RULES) -> Callable:
  """Jits ``step_fn`` with explicit shardings and donated state.

  The returned callable traces under ``jax.set_mesh(mesh)`` and the logical axis rules, so
  the models' activation constraints resolve to mesh axes. It exposes ``.jitted`` (for
  compile counting and AOT lowering).
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_lib.shardings(mesh, rules)),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  def call(state, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(state, batch_lib.select(batch))

  call.jitted = jitted
  call.mesh = mesh
  return call


def lower(call: Callable, abstract_state, abstract_batch, rules=sharding_lib.LOGICAL_AXIS_RULES):
  """AOT-lowers the jitted step on abstract inputs (compile-only checks, memory analysis)."""
  with jax.set_mesh(call.mesh), nn.logical_axis_rules(rules):
    return call.jitted.lower(abstract_state, batch_lib.select(abstract_batch))

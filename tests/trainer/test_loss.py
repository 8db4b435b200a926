"""trainer/loss.py: the vocab-tiled head + cross-entropy equals the full one (value and
gradients, fp32) and lowers the train step's compiled peak memory."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax import batch as B
from acformer_jax import config as C
from acformer_jax import sharding
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import experiment, loss as L, optim, state as S, step as ST
from tests.trainer import tiny


def _data(b=3, n=7, d=24, v=1000, seed=0):
  r = np.random.RandomState(seed)
  hidden = jnp.asarray(r.randn(b, n, d), jnp.float32)
  kernel = jnp.asarray(r.randn(d, v) * 0.3, jnp.float32)
  targets = r.randint(0, v, size=(b, n)).astype(np.int32)
  targets[:, ::3] = L.IGNORE_INDEX
  return hidden, kernel, jnp.asarray(targets)


def _full(hidden, kernel, targets):
  return L.token_loss(jnp.einsum("bnd,dv->bnv", hidden, kernel), targets)


@pytest.mark.parametrize("chunk", [250, 384, 1000, 4096])  # even tiles, padded tiles, one tile
def test_head_loss_equals_full_loss_and_gradients(chunk):
  hidden, kernel, targets = _data()
  tiled = jax.jit(lambda h, k: L.head_loss(h, k, targets, chunk=chunk))
  full = jax.jit(lambda h, k: _full(h, k, targets))
  (s1, n1, c1), (s2, n2, c2) = tiled(hidden, kernel), full(hidden, kernel)
  np.testing.assert_allclose(s1, s2, rtol=1e-6)
  assert (int(n1), int(c1)) == (int(n2), int(c2)) and int(n1) == 3 * 4
  g1 = jax.jit(jax.grad(lambda h, k: L.head_loss(h, k, targets, chunk=chunk)[0], argnums=(0, 1)))
  g2 = jax.jit(jax.grad(lambda h, k: _full(h, k, targets)[0], argnums=(0, 1)))
  for a, b in zip(g1(hidden, kernel), g2(hidden, kernel)):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-6)


def test_head_loss_rejects_bad_shapes():
  hidden, kernel, targets = _data()
  with pytest.raises(ValueError, match="head_loss: hidden"):
    L.head_loss(hidden, kernel.T, targets)
  with pytest.raises(ValueError, match="vocab_chunk must be >= 1"):
    L.head_loss(hidden, kernel, targets, chunk=0)
  with pytest.raises(ValueError, match="train.loss_impl='fused' is not one of"):
    L.loss_options({"loss_impl": "fused"})


def _step(model, mc, loss_kw, trainable=experiment.STAGE2_TRAINABLE):
  tx, schedule = optim.make_optimizer({"lr": 1e-2, "warmup_ratio": 0.0}, 10)
  state_fn = S.make_state_fn(model, mc, tx, trainable)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  abstract, shardings = S.abstract_state(state_fn, mesh)
  call = ST.jit_train_step(ST.make_train_step(model, tx, schedule, trainable=trainable, seed=3,
                                              **loss_kw), mesh, shardings)
  return call, state_fn, abstract, shardings, mesh


def test_tiled_train_step_equals_full_step():
  """Tiled on all positions and on the supervised ones (loss_positions) == the full step."""
  model = MultimodalLM(tiny.MODEL)
  out, host = {}, None
  for impl, k in (("full", 0), ("tiled", 0), ("tiled", 4)):
    call, state_fn, _, shardings, mesh = _step(
        model, tiny.MODEL, dict(loss_impl=impl, vocab_chunk=24, loss_positions=k))
    if host is None:  # one initial state for all three (the loss options do not touch it)
      host = jax.device_get(jax.jit(state_fn, out_shardings=shardings)(jax.random.key(0)))
    state = jax.device_put(host, shardings)
    state, m = call(state, B.to_device(tiny.batch(1), mesh))
    out[impl, k] = jax.device_get((state.params, m))
  p_full, m_full = out["full", 0]
  for key in (("tiled", 0), ("tiled", 4)):
    p_tiled, m_tiled = out[key]
    np.testing.assert_allclose(m_tiled["loss"], m_full["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_tiled["grad_norm"], m_full["grad_norm"], rtol=1e-5)
    assert m_tiled["token_accuracy"] == m_full["token_accuracy"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), p_tiled, p_full)


def test_tiled_loss_lowers_train_step_peak_memory():
  """Compiled temp memory (XLA's memory analysis) with a 32000-token vocabulary."""
  mc = dataclasses.replace(tiny.MODEL, llm=dataclasses.replace(tiny.LLM, vocab_size=32000),
                           image_token_id=32000)
  model = MultimodalLM(mc)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in tiny.batch(0, b=8, text=48, config=mc).items() if k in B.KEYS}
  temp = {}
  for impl in ("full", "tiled"):
    call, _, abstract, _, _ = _step(model, mc, dict(loss_impl=impl, vocab_chunk=4000))
    compiled = ST.lower(call, abstract, batch).compile()
    temp[impl] = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = 8 * (1 + C.num_visual_tokens(mc) + 48) * 32000 * 4
  assert temp["full"] > logits_bytes  # the full step holds [B, T, V] f32 logits (and more)
  assert temp["tiled"] < temp["full"] - logits_bytes, temp

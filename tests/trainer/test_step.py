"""The sharded train step (docs/jax_practices.md items 3-4; docs/method.md 2.1-2.2, 2.5): the same
loss and update on every mesh, one compile per shape, frozen towers untouched, gradient
accumulation and head-on-supervised-positions equal to the plain step."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from acformer_jax import batch as batch_lib
from acformer_jax import sharding
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import experiment, optim, state as S, step as ST
from tests.trainer import tiny

MODEL = MultimodalLM(tiny.MODEL)


@functools.lru_cache(maxsize=None)
def _host_params():
  """One random init on one device; every mesh and stage starts from exactly these numbers."""
  init = S.init_params_fn(MODEL, tiny.MODEL)
  return jax.device_get(jax.jit(lambda r: nn.unbox(init(r)))(jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _setup(trainable):
  tx, schedule = optim.make_optimizer({"lr": 1e-2, "warmup_ratio": 0.0, "weight_decay": 0.1}, 10)
  state_fn = S.make_state_fn(MODEL, tiny.MODEL, tx, trainable)
  host = jax.device_get(S.state_from_params_fn(tx, trainable)(_host_params()))  # eager: no compile
  return tx, schedule, state_fn, host


def _run(mesh, trainable, seeds=(1,), **step_kw):
  tx, schedule, state_fn, host = _setup(trainable)
  _, shardings = S.abstract_state(state_fn, mesh)
  state = jax.device_put(host, shardings)
  call = ST.jit_train_step(
      ST.make_train_step(MODEL, tx, schedule, trainable=trainable, seed=3, **step_kw),
      mesh, shardings)
  metrics = []
  for seed in seeds:
    state, m = call(state, batch_lib.to_device(tiny.batch(seed), mesh))
    metrics.append(jax.device_get(m))
  return host, jax.device_get(state), metrics, call


@functools.lru_cache(maxsize=None)
def _one_device_run(trainable):
  """``_run`` on one device, seed 1: the reference of several tests (computed once)."""
  return _run(sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]), trainable)


def _assert_close(a, b, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def _flat(tree):
  return optim._flat(tree)  # pylint: disable=protected-access


def test_same_step_on_every_mesh_and_stage2_freezes_the_vit():
  trainable = experiment.STAGE2_TRAINABLE
  host, ref, ref_m, _ = _one_device_run(trainable)
  assert ref_m[0]["finite"] and ref_m[0]["supervised_tokens"] == 8 * 4
  for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2)]:
    _, out, m, _ = _run(sharding.make_mesh(shape), trainable)
    np.testing.assert_allclose(m[0]["loss"], ref_m[0]["loss"], rtol=1e-6)
    np.testing.assert_allclose(m[0]["grad_norm"], ref_m[0]["grad_norm"], rtol=1e-5)
    _assert_close(out.params, ref.params)
    _assert_close(out.opt_state, ref.opt_state)
  # Stage 2: connector and LLM moved, the ViT is bit-identical.
  before, after = _flat(host.params), _flat(ref.params)
  for k in before:
    if k.startswith("vision/"):
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  for prefix in ("connector/", "llm/"):
    moved = [k for k in before if k.startswith(prefix) and not np.array_equal(after[k], before[k])]
    assert moved, f"no {prefix} parameter changed"
  assert int(ref.step) == 1


def test_compiles_once_across_steps():
  mesh = sharding.make_mesh((2, 2, 2))
  _, _, metrics, call = _run(mesh, experiment.STAGE2_TRAINABLE, seeds=(1, 2, 3, 4, 5))
  assert call.jitted._cache_size() == 1  # pylint: disable=protected-access
  assert len({float(m["loss"]) for m in metrics}) == 5  # five different batches really ran
  lrs = [float(m["lr"]) for m in metrics]
  assert lrs[0] == pytest.approx(1e-2) and lrs[-1] < lrs[0]  # no warmup, cosine decay


def test_stage1_leaves_llm_and_vit_bit_identical_and_no_frozen_optimizer_state():
  trainable = experiment.STAGE1_TRAINABLE
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  host, out, _, _ = _run(one, trainable)
  before, after = _flat(host.params), _flat(out.params)
  changed = {k for k in before if not np.array_equal(after[k], before[k])}
  assert changed and all(k.startswith("connector/") for k in changed), sorted(changed)[:5]
  opt_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(out.opt_state)}
  assert not any("'llm'" in p or "'vision'" in p for p in opt_paths)


def test_grad_accumulation_and_head_positions_match_the_plain_step():
  trainable = experiment.STAGE2_TRAINABLE
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, ref, ref_m, _ = _one_device_run(trainable)
  _, acc, acc_m, _ = _run(one, trainable, grad_accum=2, loss_positions=4)
  np.testing.assert_allclose(acc_m[0]["loss"], ref_m[0]["loss"], rtol=1e-6)
  assert acc_m[0]["dropped_tokens"] == 0
  _assert_close(acc.params, ref.params)


def test_state_is_placed_by_logical_axes():
  mesh = sharding.make_mesh((2, 2, 2))
  _, _, state_fn, host = _setup(experiment.STAGE2_TRAINABLE)
  abstract, shardings = S.abstract_state(state_fn, mesh)
  state = jax.device_put(host, shardings)
  up = state.params["llm"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert up.addressable_shards[0].data.shape == (1, 8, 16)
  assert abstract.params["llm"]["layers"]["mlp"]["up_proj"]["kernel"].sharding == up.sharding
  mu = state.opt_state[1][0].mu["llm"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert mu.sharding == up.sharding  # optimizer moments follow their parameters
  frac = S.replicated_fraction(state.params, shardings.params, mesh)
  assert 0 < frac < 0.5
  with pytest.raises(ValueError, match="replicated over the fsdp/tensor"):
    S.assert_sufficiently_sharded(state.params, shardings.params, mesh, tolerance=0.0)

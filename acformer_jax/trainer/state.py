"""Train state and its abstract-first, sharded initialisation.

Spec: ``docs/jax_practices.md`` item 3: ``jax.eval_shape(init)`` -> logical partition specs
(``nn.get_partition_spec``) -> ``NamedSharding`` (``sharding.logical_to_sharding``) ->
``jax.jit(init, out_shardings=...)``, so no host ever holds the full parameters; the same
sharded abstract state is the Orbax restore target. :func:`assert_sufficiently_sharded`
is MaxText's "at most 2% of parameter bytes replicated over the model axes" check.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from acformer_jax import config as config_lib
from acformer_jax import sharding as sharding_lib
from acformer_jax.trainer import optim


@flax.struct.dataclass
class TrainState:
  """``step`` (int32 scalar), ``params`` (the full tree: vision, connector, llm) and
  ``opt_state`` (optax state of the trainable subtree only)."""
  step: jax.Array
  params: Any
  opt_state: Any


def dummy_inputs(mc: config_lib.ModelConfig, batch: int = 1):
  """Smallest inputs that trace every parameter: one image and its visual tokens + 1 text."""
  s = mc.vision.image_size
  nv = config_lib.num_visual_tokens(mc)
  ids = jnp.concatenate([jnp.ones((batch, 1), jnp.int32),
                         jnp.full((batch, nv), mc.image_token_id, jnp.int32)], axis=1)
  return jnp.zeros((batch, s, s, 3), jnp.float32), ids


def init_params_fn(model: nn.Module, mc: config_lib.ModelConfig) -> Callable:
  """``rng -> boxed params`` (logical axes as ``nn.Partitioned`` metadata)."""
  def init(rng):
    images, ids = dummy_inputs(mc)
    p_rng, c_rng = jax.random.split(rng)
    return model.init(p_rng, images, ids, rng=c_rng)["params"]
  return init


def make_state_fn(model: nn.Module, mc: config_lib.ModelConfig,
                  tx: optax.GradientTransformation, trainable: Sequence[str]) -> Callable:
  """``rng -> boxed TrainState`` (boxes kept so the logical specs can be read off)."""
  init_params = init_params_fn(model, mc)

  def init(rng):
    params = init_params(rng)
    train, _ = optim.split_params(params, trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(train))
  return init


def state_from_params_fn(tx: optax.GradientTransformation, trainable: Sequence[str]) -> Callable:
  """``params -> TrainState`` at step 0 with a fresh optimizer state (init from params)."""
  def init(params):
    train, _ = optim.split_params(params, trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(train))
  return init


def abstract_state(state_fn: Callable, mesh: Mesh, rules=sharding_lib.LOGICAL_AXIS_RULES
                   ) -> Tuple[TrainState, TrainState]:
  """``(abstract unboxed state with shardings, sharding tree)`` without any FLOPs."""
  boxed = jax.eval_shape(state_fn, jax.random.key(0))
  specs = nn.get_partition_spec(boxed)
  shardings = sharding_lib.logical_to_sharding(specs, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return abstract, shardings


def init_state(state_fn: Callable, rng: jax.Array, mesh: Mesh, shardings) -> TrainState:
  """Runs ``state_fn`` under ``jit`` straight into ``shardings`` (never on one host)."""
  del mesh  # the shardings carry it; no rules context, so boxes apply no constraints
  unboxed = lambda r: nn.unbox(state_fn(r))  # noqa: E731
  return jax.jit(unboxed, out_shardings=shardings)(rng)


def _model_axes_size(spec: PartitionSpec, mesh: Mesh, data_axes=("data",)) -> int:
  n = 1
  for entry in spec:
    for ax in (entry if isinstance(entry, tuple) else (entry,)):
      if ax is not None and ax not in data_axes:
        n *= mesh.shape[ax]
  return n


def replicated_fraction(params, shardings, mesh: Mesh, data_axes=("data",)) -> float:
  """Fraction of parameter bytes not sharded at all over the non-data mesh axes."""
  model_devices = int(np.prod([mesh.shape[a] for a in mesh.axis_names if a not in data_axes]))
  if model_devices <= 1:
    return 0.0
  total = rep = 0
  for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
    nbytes = int(np.prod(p.shape)) * jnp.dtype(p.dtype).itemsize
    total += nbytes
    if _model_axes_size(s.spec, mesh, data_axes) == 1:
      rep += nbytes
  return rep / max(total, 1)


def assert_sufficiently_sharded(params, shardings, mesh: Mesh, tolerance: float = 0.02) -> float:
  """Fails if more than ``tolerance`` of parameter bytes are replicated over the model axes
  (``fsdp`` x ``tensor``); a negative tolerance disables the check. Returns the fraction."""
  frac = replicated_fraction(params, shardings, mesh)
  if tolerance >= 0 and frac > tolerance:
    raise ValueError(
        f"{100 * frac:.1f}% of parameter bytes are replicated over the fsdp/tensor mesh axes "
        f"{dict(mesh.shape)} (tolerance train.sharding_tolerance={tolerance}); check the logical "
        "axis rules in acformer_jax/sharding.py or the mesh shape")
  return frac


def param_count(params: Mapping) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))

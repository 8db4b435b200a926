"""Small building blocks shared by the towers: partitioned Dense/LayerNorm/RMSNorm,
dtype handling, remat policies and the stacked-layer scan.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) from
``acformer_jax.sharding.LOGICAL_AXIS_RULES``; spec ``docs/jax_practices.md`` "What
acformer_jax should adopt", items 1 and 9.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

DType = Any
Axes = Sequence[Optional[str]]

# Activations the decoder tags with ``jax.ad_checkpoint.checkpoint_name`` (models/llama.py):
# q/k/v after RoPE, the attention block's output (after o_proj) and the MLP's gate/up
# projections. The MLP block's output is not tagged: the backward never reads it (the next
# block's input is the scan carry, which every policy saves).
QKV_PROJ, ATTN_OUT, MLP_IN = "qkv_proj", "attn_out", "mlp_in"
NAMED_POLICIES = {  # policy -> names kept in device memory
    "save_qkv": (QKV_PROJ,),
    "save_qkv_attn": (QKV_PROJ, ATTN_OUT),
    "save_named": (QKV_PROJ, ATTN_OUT, MLP_IN),
}
OFFLOAD_POLICIES = {  # policy -> names moved to pinned host memory after the forward
    "offload_qkv": (QKV_PROJ,),
    "offload_named": (QKV_PROJ, ATTN_OUT, MLP_IN),
}
REMAT_POLICIES = (("none", "full", "minimal", "dots") + tuple(NAMED_POLICIES)
                  + tuple(OFFLOAD_POLICIES))

# Torch-compatible initialisers are irrelevant (weights come from checkpoints); these
# only give sensible random models for tests and from-scratch parts.
DEFAULT_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


def to_dtype(dtype: DType) -> jnp.dtype:
  """``"bfloat16"`` / ``jnp.bfloat16`` / ``np.float32`` -> ``jnp.dtype``."""
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"unknown dtype {dtype!r}; expected e.g. 'float32' or 'bfloat16'") from e


def tower_options(model_config) -> dict:
  """The tower keyword arguments carried by a ``ModelConfig``.

  Usage: ``LlamaModel(mc.llm, **tower_options(mc))``.
  """
  return dict(dtype=model_config.dtype, param_dtype=model_config.param_dtype,
              scan_layers=model_config.scan_layers, remat_policy=model_config.remat_policy,
              attention=model_config.attention)


def partitioned(init: Callable, axes: Axes) -> Callable:
  return nn.with_logical_partitioning(init, tuple(axes))


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
  """Logical sharding constraint on an activation (no-op without rules/mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))


def dense(features: int, axes: Axes, *, use_bias: bool, dtype: DType, param_dtype: DType,
          name: Optional[str] = None, kernel_init: Callable = DEFAULT_KERNEL_INIT) -> nn.Dense:
  """``nn.Dense`` with a 2-D ``[in, out]`` kernel named by ``axes`` (bias: ``axes[-1]``)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=to_dtype(dtype), param_dtype=to_dtype(param_dtype),
      kernel_init=partitioned(kernel_init, axes),
      bias_init=partitioned(nn.initializers.zeros_init(), (axes[-1],)), name=name)


def layer_norm(eps: float, *, dtype: DType, param_dtype: DType, name: Optional[str] = None,
               axis_name: str = "norm") -> nn.LayerNorm:
  """LayerNorm with scale and bias (torch semantics: exact two-pass variance)."""
  return nn.LayerNorm(
      epsilon=eps, dtype=to_dtype(dtype), param_dtype=to_dtype(param_dtype),
      use_fast_variance=False,
      scale_init=partitioned(nn.initializers.ones_init(), (axis_name,)),
      bias_init=partitioned(nn.initializers.zeros_init(), (axis_name,)), name=name)


class RMSNorm(nn.Module):
  """LLaMA RMSNorm, HF-exact: normalise in float32, cast back, then scale (docs/method.md 3.1).
  ``unit_offset``: Gemma's variant, scale by ``1 + w`` (``w`` starts at zero)."""
  eps: float = 1e-5
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  unit_offset: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros_init() if self.unit_offset else nn.initializers.ones_init()
    scale = self.param("scale", partitioned(init, ("norm",)),
                       (x.shape[-1],), to_dtype(self.param_dtype))
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
    if self.unit_offset:  # Gemma: (1 + w) applied in float32, then cast
      return (h * (1.0 + scale.astype(jnp.float32))).astype(to_dtype(self.dtype))
    return (scale.astype(to_dtype(self.dtype)) * h.astype(x.dtype)).astype(to_dtype(self.dtype))


def remat_policy(name: str):
  """Named rematerialisation policy (``ModelConfig.remat_policy``; docs/training.md).

  ``none``: no remat (keep every activation); ``full``: save nothing, recompute the
  whole block; ``minimal``: save the projections against weights (matmuls without batch
  dims), recompute attention scores and elementwise ops; ``dots``: save every matmul.
  ``save_*`` (``NAMED_POLICIES``): keep only the tensors tagged with those names and
  recompute the rest; ``offload_*`` (``OFFLOAD_POLICIES``): the same tensors, moved to
  pinned host memory between forward and backward (TPU/GPU; XLA:CPU also compiles it).
  Returns ``False`` for ``none`` and the ``jax.checkpoint`` policy otherwise.
  """
  cp = jax.checkpoint_policies
  table = {"none": False, "full": cp.nothing_saveable,
           "minimal": cp.checkpoint_dots_with_no_batch_dims, "dots": cp.checkpoint_dots}
  if name in table:
    return table[name]
  if name in NAMED_POLICIES:
    return cp.save_only_these_names(*NAMED_POLICIES[name])
  if name in OFFLOAD_POLICIES:
    return cp.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(OFFLOAD_POLICIES[name]),
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"remat_policy={name!r} is not one of {REMAT_POLICIES}")


@jax.custom_vjp
def round_to_bf16(x: jax.Array) -> jax.Array:
  """``x.astype(bfloat16)`` for float32 ``x`` (round to nearest even, NaN stays NaN), written
  with integer ops so that XLA's bfloat16 propagation cannot move it out of a loop.

  A plain ``convert`` of a layer's weight slice inside the layer scan is rewritten by XLA:TPU's
  ``bfloat16-propagation`` pass into a bfloat16 while-loop operand: one bfloat16 copy of the
  whole stacked weights, converted before the layer loops and held through the forward and
  the backward loop (0.75 GiB per chip for a 7B decoder on 16 chips; docs/aot.md, issue #14).
  The gradient is the cotangent cast back to float32, as for ``astype``.
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
  out = jax.lax.bitcast_convert_type(bits.astype(jnp.uint16), jnp.bfloat16)
  return jnp.where(jnp.isnan(x), jnp.asarray(jnp.nan, jnp.bfloat16), out)


round_to_bf16.defvjp(lambda x: (round_to_bf16(x), None),
                     lambda _, g: (g.astype(jnp.float32),))


def _kernel_cast(dtype: Optional[DType]) -> Callable:
  """``trans_in_fn`` of ``stacked``: casts each float32 ``kernel`` of one layer's parameters to
  ``dtype`` (bfloat16) with :func:`round_to_bf16`; other leaves and boxed (initialising)
  values pass through. ``nn.Dense`` casts its kernel to its compute dtype anyway, so the layer
  computes exactly what it computed from the float32 kernel."""
  def cast(path, leaf):
    if (isinstance(leaf, nn.meta.AxisMetadata) or getattr(path[-1], "key", None) != "kernel"
        or leaf.dtype != jnp.float32):
      return leaf
    return round_to_bf16(leaf)
  if dtype is None or to_dtype(dtype) != jnp.bfloat16:
    return lambda tree: tree
  return lambda tree: jax.tree_util.tree_map_with_path(
      cast, tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def stacked(block: type[nn.Module], *, length: int, scan_layers: bool, remat: str,
            in_axes: tuple, cast_kernels_to: Optional[DType] = None) -> type[nn.Module]:
  """Wraps ``block`` into a stack of ``length`` layers with a leading ``layers`` axis.

  The block's call is ``(carry, *args) -> (carry, ys)``; ``in_axes`` says per extra
  argument whether it is broadcast (``nn.broadcast``) or scanned (``0``).
  ``scan_layers=False`` fully unrolls the same scan, so the parameter layout is
  identical either way.
  ``cast_kernels_to``: the block's compute dtype when all its ``kernel`` parameters are
  ``nn.Dense`` kernels cast to it (the decoder); they are then cast per layer inside the loop
  (:func:`round_to_bf16`) instead of XLA keeping a cast copy of the whole stack.
  """
  policy = remat_policy(remat)
  if cast_kernels_to is not None:
    block = nn.map_variables(block, "params", trans_in_fn=_kernel_cast(cast_kernels_to),
                             init=True)
  if policy is not False:
    block = nn.remat(block, policy=policy, prevent_cse=False)  # always inside a scan
  return nn.scan(
      block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
      length=length, unroll=1 if scan_layers else max(length, 1),
      metadata_params={nn.PARTITION_NAME: "layers"})

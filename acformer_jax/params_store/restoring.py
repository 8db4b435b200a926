"""Restore: abstract-first targets and Orbax restores of a whole tree or a subtree.

``jax.eval_shape(init)`` -> logical partition specs -> ``NamedSharding`` on the mesh ->
Orbax restore into them (``docs/jax_practices.md`` items 3 and 6): a params directory
restores onto any mesh and no host holds the full tree unsharded.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax import integrity
from acformer_jax import sharding as sharding_lib
from acformer_jax.keymap import flatten_paths
from acformer_jax.params_store import layout


def _dummy_inputs(mc: config_lib.ModelConfig):
  s = mc.vision.image_size
  ids = jnp.concatenate([jnp.ones((1, 1), jnp.int32),
                         jnp.full((1, config_lib.num_visual_tokens(mc)), mc.image_token_id,
                                  jnp.int32)], axis=1)
  return jnp.zeros((1, s, s, 3), jnp.float32), ids


def abstract_params(module: nn.Module, *init_args, **init_kwargs) -> Any:
  """``params`` of ``module.init(*init_args, **init_kwargs)`` as boxed ShapeDtypeStructs
  (logical axes kept); no FLOPs, no memory."""
  return jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), *init_args, **init_kwargs))["params"]


@functools.lru_cache(maxsize=8)
def abstract_tree(cfg: config_lib.ModelConfig) -> Any:
  """:func:`abstract_params` of ``MultimodalLM(cfg)``, traced once per config."""
  from acformer_jax.models.mllm import MultimodalLM  # pylint: disable=import-outside-toplevel
  images, ids = _dummy_inputs(cfg)
  return abstract_params(MultimodalLM(cfg), images, ids, rng=jax.random.PRNGKey(1))


def sharded_abstract(boxed: Any, mesh=None) -> Any:
  """Boxed abstract params -> unboxed ``ShapeDtypeStruct`` s with their NamedShardings on
  ``mesh`` (from the logical axes), or all on the first device without a mesh."""
  if mesh is None:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: dev, nn.unbox(boxed))
  else:
    shardings = sharding_lib.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def target_tree(cfg: config_lib.ModelConfig, mesh=None) -> Any:
  """Unboxed abstract params of ``MultimodalLM(cfg)`` carrying their target shardings."""
  return sharded_abstract(abstract_tree(cfg), mesh)


def resolve_params_source(path) -> Tuple[pathlib.Path, Tuple[str, ...]]:
  """``(item directory, key prefix)`` of the parameters stored under ``path``.

  Accepts a params directory (``params/`` inside), a run's checkpoint root or workdir
  (latest step), a step directory, or an item directory itself.
  """
  p = pathlib.Path(path).absolute()
  if not p.exists():
    raise FileNotFoundError(f"params source {p} does not exist")
  if (p / layout.PARAMS_DIR).is_dir():
    return p / layout.PARAMS_DIR, ()
  if (p / "state").is_dir():
    return p / "state", ("params",)
  for root in (p / "checkpoints", p):
    steps = sorted(int(c.name) for c in root.iterdir() if c.is_dir() and c.name.isdigit()) \
        if root.is_dir() else []
    if steps:
      return root / str(steps[-1]) / "state", ("params",)
  if (p / "_METADATA").is_file():
    return p, ()
  raise FileNotFoundError(
      f"{p} holds no parameters: expected a params directory (params/), a checkpoint root "
      "(<step>/state), a step directory (state/) or an Orbax item directory (_METADATA)")


def read_checksums(item) -> Optional[Mapping[str, Any]]:
  """Recorded checksums of a params item: a run's ``<step>/integrity`` item for
  ``<step>/state``, else the ``<item>_checksums.json`` sidecar; None when there are none."""
  item = pathlib.Path(item)
  if item.name == "state" and (item.parent / "integrity").is_dir():
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        item.parent / "integrity", args=ocp.args.JsonRestore())
  return integrity.read_sidecar(item)


def restore(path, abstract: Any, prefix: Sequence[str] = ()) -> Any:
  """Restores the subtree ``abstract`` (ShapeDtypeStructs with shardings) from ``path``.

  ``path``: anything :func:`resolve_params_source` accepts. ``prefix`` addresses the subtree
  inside the stored tree, e.g. ``("connector",)``; ``abstract`` may name a part of it (any
  nested dict of leaves). Everything else is skipped (partial restore, no extra memory);
  the restored arrays are checked against the recorded checksums.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  item, base = resolve_params_source(path)
  keys = tuple(base) + tuple(prefix)
  target: Any = abstract
  for k in reversed(keys):
    target = {k: target}
  stored = stored_shapes(item)
  missing = [p for p in flatten_paths(target) if p not in stored]
  if missing:  # a partial restore would skip them silently
    raise ValueError(f"cannot load {'/'.join(keys) or 'params'} from {item}: it holds no "
                     f"array {missing[:5]} ({len(missing)} missing)")
  restore_args = jax.tree.map(
      lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
      target)
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      out = ckptr.restore(item, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
  except Exception as e:
    raise ValueError(f"cannot load {'/'.join(keys) or 'params'} from {item}: "
                     f"{type(e).__name__}: {str(e)[:500]}") from e
  integrity.verify(out, read_checksums(item), f"params source {item}")
  for k in keys:
    out = out[k]
  return out


def restore_all(directory, mesh=None, dtype: Optional[str] = None
                ) -> Tuple[config_lib.ModelConfig, Any]:
  """``(ModelConfig, params)`` of a params directory, the whole tree placed on ``mesh``
  (one device without); ``dtype`` overrides the compute dtype, params keep theirs."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory)
  mc = layout.read_model_config(directory)
  if dtype is not None:
    mc = dataclasses.replace(mc, dtype=dtype)
  params_dir = directory / layout.PARAMS_DIR
  if not params_dir.is_dir():
    raise FileNotFoundError(f"{params_dir} not found: expected the Orbax params item of "
                            "a params directory (see docs/inference.md)")
  target = target_tree(mc, mesh)
  try:
    params = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
  except (ValueError, KeyError) as e:
    raise ValueError(f"{params_dir}: the params do not match {directory / layout.CONFIG_FILE} "
                     f"({type(e).__name__}: {str(e)[:500]})") from None
  integrity.verify(params, integrity.read_sidecar(params_dir), f"params {params_dir}")
  return mc, params


def stored_shapes(item) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
  """``"llm/norm/scale" -> (shape, dtype)`` of every array under nested dicts in an Orbax
  item (metadata only)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(pathlib.Path(item).absolute())
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  return {p: (tuple(m.shape), m.dtype) for p, m in flatten_paths(tree).items()
          if hasattr(m, "shape")}  # (a run's ``state`` also holds lists: optimizer state)


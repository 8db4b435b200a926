"""The benchmark workload: experiment config -> per-connector config, batch and compiled step.

Every connector variant shares the vision tower, the decoder and the batch (images and
caption tokens); only the connector and the number of image slots differ, as in the
paper's speed comparison (``docs/method.md`` 1.7: same hardware, same batch, stage-1 step).
The step comes from the trainer's own builder (``trainer/builder.py``) on a one-device mesh.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import pathlib
import time
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax import batch as batch_lib
from acformer_jax import config as config_lib
from acformer_jax import sharding as sharding_lib
from acformer_jax.trainer import builder, experiment, state as state_lib


def load_experiment(spec: str):
  """``configs/x.py`` or ``configs/x.py:arg`` -> the file's ``get_config([arg])``."""
  path, _, arg = spec.partition(":")
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"--config {p} does not exist")
  mod_spec = importlib.util.spec_from_file_location(f"acformer_config_{p.stem}", p)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  if not hasattr(mod, "get_config"):
    raise ValueError(f"--config {p} defines no get_config()")
  return mod.get_config(arg) if arg else mod.get_config()


def connector_config(name: str, base: config_lib.ConnectorConfig) -> config_lib.ConnectorConfig:
  """A connector variant by name: a preset (``acformer144``, ``mlp2x_gelu``, ...), a type
  (``acformer`` keeps the config's budget) or ``type:K`` (``pooling_pr:144``)."""
  if name in experiment.CONNECTOR_PRESETS:
    return dataclasses.replace(base, **experiment.CONNECTOR_PRESETS[name])
  kind, _, k = name.partition(":")
  if kind not in config_lib.connector_types():
    raise ValueError(f"connector {name!r}: expected a preset {sorted(experiment.CONNECTOR_PRESETS)}, "
                     f"a type {config_lib.connector_types()} or 'type:K'")
  out = dataclasses.replace(base, type=kind)
  if k:
    try:
      out = dataclasses.replace(out, num_queries=int(k))
    except ValueError:
      raise ValueError(f"connector {name!r}: K must be an integer") from None
  return out


def variant(mc: config_lib.ModelConfig, name: str, **overrides) -> config_lib.ModelConfig:
  mc = dataclasses.replace(mc, connector=connector_config(name, mc.connector), **overrides)
  config_lib.num_visual_tokens(mc)  # validates the type
  return mc


def variant_config(cfg, name: str, *, max_length: int, images_per_row: int = 1,
                   global_batch: Optional[int] = None, scan_layers: Optional[bool] = None):
  """A copy of experiment config ``cfg`` with connector ``name`` (see :func:`connector_config`),
  rows of ``max_length`` tokens and ``images_per_row`` image slots (packed rows when > 1)."""
  c = copy.deepcopy(cfg)
  mc = variant(model_config(cfg), name)
  c.model.connector = experiment.dict_of(mc.connector)
  c.data.max_length = int(max_length)
  c.data.packing = images_per_row > 1
  c.data.max_images_per_row = int(images_per_row)
  if global_batch is not None:
    c.train.global_batch_size = int(global_batch)
  if scan_layers is not None:
    c.model.scan_layers = bool(scan_layers)
  return c


def make_batch(mc: config_lib.ModelConfig, batch: int, text_len: int, seed: int = 0
               ) -> Dict[str, np.ndarray]:
  """Stage-1 (``plain`` template) batch, one sample per row (``acformer_jax.batch``):
  ``[BOS, image x Nv, caption (text_len - 1 tokens)]``.

  Images and caption ids depend only on ``seed`` and the vision/LLM configs, so every
  connector variant sees the same data; labels supervise the caption (docs/method.md 2.4).
  """
  if text_len < 2:
    raise ValueError(f"bench.text_len must be >= 2 (BOS + caption), got {text_len}")
  rng = np.random.default_rng(seed)
  s, nv, v = mc.vision.image_size, config_lib.num_visual_tokens(mc), mc.llm.vocab_size
  images = rng.standard_normal((batch, s, s, 3), dtype=np.float32)
  caption = rng.integers(3, v, size=(batch, text_len - 1), dtype=np.int32)
  bos = np.full((batch, 1), mc.llm.bos_token_id, np.int32)
  ids = np.concatenate([bos, np.full((batch, nv), mc.image_token_id, np.int32), caption], axis=1)
  labels = ids.copy()
  labels[:, :1 + nv] = batch_lib.IGNORE_INDEX
  return batch_lib.unpacked(images, ids, labels)


def config_for_model(mc: config_lib.ModelConfig, *, max_length: int, global_batch: int,
                     stage: int = 1, **train):
  """An experiment config around a ModelConfig (``stage`` recipe, ``train`` overrides)."""
  c = experiment.base_config()
  (experiment.stage1 if stage == 1 else experiment.stage2)(c)
  d = config_lib.model_config_to_dict(mc)
  for k in ("vision", "llm", "connector"):
    c.model[k] = experiment.dict_of(getattr(mc, k))
    del d[k]
  c.model.update(d)
  c.data.max_length = int(max_length)
  c.train.global_batch_size = int(global_batch)
  c.train.update(train)
  return c


@dataclasses.dataclass
class StepBundle:
  """A compiled, ready-to-time train step for one experiment config."""
  experiment: builder.Experiment
  compiled: Any                  # AOT-compiled (state, batch) -> (state, metrics), state donated
  state: Any
  batch: Dict[str, jax.Array]
  seq_len: int
  compile_s: float
  batch_np: Dict[str, np.ndarray]
  lowered: Any = None            # what was compiled (jax.stages.Lowered)

  @property
  def config(self) -> config_lib.ModelConfig:
    return self.experiment.mc

  def run(self):
    """One step, threading the donated state; blocks until done; returns the metrics."""
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics


def one_device_mesh():
  return sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def build(cfg, mesh=None) -> builder.Experiment:
  """The trainer's experiment (``trainer/builder.py``) for ``cfg`` on ``mesh`` (default: one
  device)."""
  return builder.build_experiment(cfg, mesh if mesh is not None else one_device_mesh(),
                                  process_count=1, random_init_ok=True)


def random_params(abstract: Any, seed: int = 0, std: float = 0.02) -> Any:
  """Host-drawn random params for the abstract tree: norm scales 1, biases 0, else N(0, std).

  Timing does not depend on the values; drawing them with numpy avoids compiling the
  model's initialisers (seconds per variant on CPU).
  """
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return np.ones(a.shape, a.dtype)
    if name == "bias":
      return np.zeros(a.shape, a.dtype)
    return (std * rng.standard_normal(a.shape, dtype=np.float32)).astype(a.dtype)
  return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract))


def build_step(cfg, batch_np: Dict[str, np.ndarray], *, shared: Optional[Dict[str, Any]] = None,
               params: Any = None, seed: int = 0, mesh=None) -> StepBundle:
  """Initialises a state on one device and AOT-compiles the trainer's step for ``cfg``.

  ``batch_np`` must have ``cfg``'s global batch shape. ``shared``: params subtrees (e.g.
  ``vision``, ``llm``) to use instead of the fresh init, so connector variants run the very
  same towers. ``params``: the whole (unboxed) tree to start from instead of a random init
  (copied: the state is donated).
  """
  ex = build(cfg, mesh)
  got = batch_lib.check(batch_np)
  if got != ex.batch_shape:
    raise ValueError(f"bench batch {got} does not match the config's {ex.batch_shape}")
  if params is None:
    params = random_params(ex.abstract_state.params, seed)
  from_params = state_lib.state_from_params_fn(ex.tx, ex.trainable)
  st = jax.jit(from_params, out_shardings=ex.state_shardings)(jax.tree.map(jnp.copy, params))
  if shared:
    params = dict(st.params)
    for k, v in shared.items():
      if jax.tree.map(jnp.shape, v) != jax.tree.map(jnp.shape, params[k]):
        raise ValueError(f"shared params '{k}' do not match the model's shapes")
      params[k] = jax.tree.map(jnp.copy, v)  # own buffers: the state is donated
    st = st.replace(params=params)
  batch = batch_lib.to_device(batch_np, ex.mesh)
  t = time.perf_counter()
  lowered = ex.lower()
  compiled = lowered.compile()
  return StepBundle(ex, compiled, st, batch, got.length, time.perf_counter() - t, batch_np,
                    lowered)


def model_config(cfg) -> config_lib.ModelConfig:
  return config_lib.model_config_from_dict(cfg.model)


def bench_section(cfg) -> Dict[str, Any]:
  """``cfg.bench`` with defaults (any experiment file works: ``mlp2x_gelu`` vs the config's
  connector, 32 text tokens, 5 repetitions)."""
  b = dict(cfg.bench) if "bench" in cfg else {}
  b.setdefault("text_len", 32)
  b.setdefault("connectors", f"mlp2x_gelu,{cfg.model.connector.type}")
  b.setdefault("reps", 5)
  b.setdefault("warmup", 1)
  return b


def shapes_for(cfg) -> Tuple[int, int]:
  return int(cfg.train.global_batch_size), int(bench_section(cfg)["text_len"])

"""Initial parameters of a run that does not resume: random + subtrees taken from sources.

Spec: ``docs/method.md`` 2.1-2.2 (stage 1: CLIP + Vicuna + a new connector; stage 2: the stage-1
connector + the converted LLM) and ``docs/jax_practices.md`` items 3, 6 and 12 (load each tower
from its own source straight into its target sharding; never materialise full parameters on
one host). ``config.init`` names a source per top-level subtree (``vision``, ``connector``,
``llm``), see :func:`acformer_jax.trainer.experiment.init_sources` (``init.from_pretrained``:
every subtree from one checkpoint, ``trainer/pretrained.py``); subtrees without a source
are drawn from the model's initialisers, and only those are computed.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping

import jax

from acformer_jax import config as config_lib
from acformer_jax import integrity
from acformer_jax import params_store
from acformer_jax.trainer import experiment

logger = logging.getLogger("acformer_jax.trainer.initialize")

# Tower fields that must agree between a Hugging Face checkpoint and the model config.
_LLM_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
               "num_kv_heads", "resolved_head_dim", "tie_word_embeddings", "attention_bias",
               "sliding_window", "norm_unit_offset", "scale_embeddings", "mlp_activation")
_VIT_FIELDS = ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers",
               "num_heads")


def _check_fields(kind: str, path: str, got, want, fields) -> None:
  bad = [f"{f}: checkpoint {getattr(got, f)} vs model {getattr(want, f)}"
         for f in fields if getattr(got, f) != getattr(want, f)]
  if bad:
    raise ValueError(f"init source {kind}:{path} does not match config.model: " + "; ".join(bad))


def _check_shapes(name: str, source: str, loaded, abstract) -> None:
  got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
  if got != want:
    diff = sorted(set(got.items()) ^ set(want.items()))[:6]
    raise ValueError(f"init.{name} from {source}: parameter shapes differ from the model "
                     f"(first differences, path -> shape): {diff}")


def load_subtree(name: str, src: Mapping[str, str], abstract, mc: config_lib.ModelConfig):
  """Loads one top-level subtree into the shardings carried by ``abstract``."""
  kind, path = src["kind"], src["path"]
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  if kind == "orbax":
    prefix = tuple(p for p in src["prefix"].split("/") if p)
    try:
      loaded = params_store.restore(path, abstract, prefix=prefix)
    except integrity.IntegrityError as e:
      from acformer_jax.trainer.validate import ConfigError  # pylint: disable=import-outside-toplevel
      raise ConfigError(f"init.{name}: {e}") from None
  elif kind == "hf_llama":
    from acformer_jax.conversion.towers import load_hf_llama  # pylint: disable=import-outside-toplevel
    cfg, loaded = load_hf_llama(path, param_dtype=mc.param_dtype, shardings=shardings,
                                family=mc.llm.family)
    _check_fields(kind, path, cfg, mc.llm, _LLM_FIELDS)
  elif kind == "pretrained":  # init.from_pretrained: the config was resolved from it
    from acformer_jax.trainer import pretrained  # pylint: disable=import-outside-toplevel
    loaded = pretrained.load_subtree(path, name, abstract)
  elif kind == "hf_clip":
    from acformer_jax.conversion.towers import load_hf_clip_vision  # pylint: disable=import-outside-toplevel
    cfg, loaded = load_hf_clip_vision(path, select_layer=mc.vision.select_layer,
                                      param_dtype=mc.param_dtype, shardings=shardings)
    # A tower that stores its position grid (DINOv2) runs at any multiple of the patch.
    fields = _VIT_FIELDS + ("tower", "num_register_tokens", "use_head")
    if cfg.position_grid:
      fields = tuple(f for f in fields if f != "image_size") + ("position_grid",)
    _check_fields(kind, path, cfg, mc.vision, fields)
  else:  # parse_source rejects anything else
    raise AssertionError(kind)
  _check_shapes(name, f"{kind}:{path}", loaded, abstract)
  return jax.tree.map(lambda x, a: x.astype(a.dtype) if x.dtype != a.dtype else x, loaded, abstract)


def initial_params(init_cfg, init_params_fn: Callable, abstract_params: Mapping[str, Any],
                   param_shardings: Mapping[str, Any], mc: config_lib.ModelConfig,
                   rng: jax.Array) -> Dict[str, Any]:
  """The full parameter tree: random where no source is given, loaded elsewhere.

  Args:
    init_cfg: ``config.init``.
    init_params_fn: ``rng -> unboxed params`` (random, all subtrees).
    abstract_params: unboxed ShapeDtypeStructs carrying shardings.
    param_shardings: the matching sharding tree.
    mc: the model config (tower checks for Hugging Face sources).
    rng: key for the random subtrees.
  """
  sources = experiment.init_sources(init_cfg)
  random_names = [n for n in abstract_params if not sources.get(n)]
  params: Dict[str, Any] = {}
  if random_names:
    only = lambda r: {n: init_params_fn(r)[n] for n in random_names}  # noqa: E731  (DCE drops the rest)
    params.update(jax.jit(only, out_shardings={n: param_shardings[n] for n in random_names})(rng))
    logger.info("random init for %s", random_names)
  for name, src in sources.items():
    if src and name in abstract_params:
      logger.info("init.%s <- %s:%s (prefix %s)", name, src["kind"], src["path"], src.get("prefix"))
      params[name] = load_subtree(name, src, abstract_params[name], mc)
  return {n: params[n] for n in abstract_params}


def describe_sources(init_cfg) -> str:
  sources = experiment.init_sources(init_cfg)
  return ", ".join(f"{n}={'random' if not s else s['kind'] + ':' + s['path']}"
                   for n, s in sources.items())


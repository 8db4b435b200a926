"""Early config validation with messages that name the field and what was expected.

Spec: ``docs/jax_practices.md`` item 13 (validate before anything expensive). Checked before
any device memory is touched: mesh size vs device count, batch divisibility by the batch
mesh axes (and by accumulation and hosts), the visual-token budget vs the ViT heads,
connector type, sequence length vs visual tokens, optimizer and schedule fields, the
trainable patterns and the init sources.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional, Sequence

from acformer_jax import config as config_lib
from acformer_jax import sharding as sharding_lib
from acformer_jax.data import sampler
from acformer_jax.models import connectors, registry, towers
from acformer_jax.models import attention as attention_lib
from acformer_jax.models.layers import REMAT_POLICIES
from acformer_jax.trainer import experiment

logger = logging.getLogger("acformer_jax.trainer.validate")


# Model fields whose None is a value (their dataclass default is None: head_dim,
# rope_scaling, sliding_window, ...), not "unset".
_OPTIONAL = frozenset(f.name for cls in (config_lib.VisionConfig, config_lib.LLMConfig,
                                         config_lib.ConnectorConfig)
                      for f in dataclasses.fields(cls) if f.default is None)


class ConfigError(ValueError):
  """An invalid experiment config (the message lists every problem found)."""


def resolve_mesh_shape(shape: Sequence[int], dcn_shape: Sequence[int], num_devices: int,
                       errors: List[str]) -> Optional[tuple]:
  """The full ``(data, fsdp, tensor)`` sizes (ICI x DCN) with -1 resolved
  (``sharding.resolve_mesh_shape``), or None with the problem appended to ``errors``."""
  try:
    ici, dcn = sharding_lib.resolve_mesh_shape(shape, dcn_shape, num_devices)
  except ValueError as e:
    errors.append(str(e))
    return None
  return tuple(a * b for a, b in zip(ici, dcn))


def _check_model(mc: config_lib.ModelConfig, errors: List[str], pretrained: bool = False) -> None:
  c, v, l = mc.connector, mc.vision, mc.llm
  errors.extend(towers.validate(v))
  if l.family not in registry.FAMILIES:
    errors.append(f"model.llm.family={l.family!r} is not registered; known: "
                  f"{registry.FAMILIES.names()}")
  problems = connectors.validate(mc)
  errors.extend(problems)
  if c.type not in connectors.connector_names():
    return
  if not problems and connectors.connector(c.type).uses_anchor_attn and c.num_queries % v.num_heads:
    logger.warning("model.connector.num_queries=%d is not a multiple of %d heads: %d anchors are "
                   "used", c.num_queries, v.num_heads, v.num_heads * (c.num_queries // v.num_heads))
  if mc.remat_policy not in REMAT_POLICIES:
    errors.append(f"model.remat_policy={mc.remat_policy!r} is not one of {REMAT_POLICIES}")
  if mc.attention not in attention_lib.IMPLS:
    errors.append(f"model.attention={mc.attention!r} is not one of {attention_lib.IMPLS}")
  if l.hidden_size % l.num_heads or l.num_heads % l.num_kv_heads:
    errors.append(f"model.llm: hidden_size={l.hidden_size} must divide by num_heads={l.num_heads} "
                  f"and num_heads by num_kv_heads={l.num_kv_heads}")
  if v.hidden_size % v.num_heads or v.image_size % v.patch_size:
    errors.append(f"model.vision: hidden_size={v.hidden_size} must divide by num_heads="
                  f"{v.num_heads} and image_size={v.image_size} by patch_size={v.patch_size}")
  try:
    v.num_computed_layers  # pylint: disable=pointless-statement
  except ValueError as e:
    errors.append(f"model.vision: {e}")
  if mc.image_token_id < l.vocab_size and mc.image_token_id not in (0,) and not pretrained:
    logger.warning("model.image_token_id=%d is inside the LLM vocabulary (%d): real text tokens "
                   "with that id would be replaced by visual tokens", mc.image_token_id, l.vocab_size)


def _check_length(t, data, errors: List[str]) -> None:
  """``train.steps`` or ``train.epochs``: exactly one of them."""
  steps, epochs = t.get("steps"), t.get("epochs")
  if steps is not None and epochs is not None:
    errors.append(f"train.steps={steps} and train.epochs={epochs} are both set; set one of them "
                  "(e.g. --config.train.steps=None to train for train.epochs)")
  elif steps is None and epochs is None:
    errors.append("neither train.steps nor train.epochs is set; set one of them")
  elif steps is not None and int(steps) < 1:
    errors.append(f"train.steps={steps} must be >= 1")
  elif epochs is not None:
    if int(epochs) < 1:
      errors.append(f"train.epochs={epochs} must be >= 1")
    elif data.get("num_epochs") is not None and int(data.num_epochs) != int(epochs):
      errors.append(f"train.epochs={epochs} and data.num_epochs={data.num_epochs} disagree; "
                    "leave data.num_epochs unset (train.epochs sets it)")


def validate(config, *, num_devices: int, process_count: int = 1) -> config_lib.ModelConfig:
  """Checks an experiment config; returns its ModelConfig or raises :class:`ConfigError`."""
  errors: List[str] = []
  unset = [f"model.{s}.{k}" for s in ("vision", "llm", "connector")
           for k, v in config.model[s].items() if v is None and k not in _OPTIONAL]
  unset += ["model.image_token_id"] if config.model.get("image_token_id") is None else []
  if unset:
    raise ConfigError(f"{', '.join(unset[:4])}{' ...' if len(unset) > 4 else ''} unset: set "
                      "init.from_pretrained=DIR (a checkpoint or HF Llava directory) to take the "
                      "model from it, or give the fields")
  try:
    mc = config_lib.model_config_from_dict(config.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model: {e}") from e
  _check_model(mc, errors, pretrained=bool(config.init.get("from_pretrained")))
  if mc.connector.type in connectors.connector_names():
    experiment.resolve_max_length(config)

  t = config.train
  mesh = resolve_mesh_shape(config.mesh.shape, config.mesh.dcn_shape, num_devices, errors)
  gb, accum = int(t.global_batch_size), int(t.grad_accum_steps)
  if gb < 1 or accum < 1:
    errors.append(f"train.global_batch_size={gb} and train.grad_accum_steps={accum} must be >= 1")
  elif gb % accum:
    errors.append(f"train.global_batch_size={gb} must be divisible by train.grad_accum_steps={accum}")
  elif mesh is not None:
    batch_devices = mesh[0] * mesh[1]
    if (gb // accum) % batch_devices:
      errors.append(
          f"train.global_batch_size={gb} / grad_accum_steps={accum} = {gb // accum} rows per "
          f"microbatch must be divisible by the batch mesh axes data x fsdp = {mesh[0]} x "
          f"{mesh[1]} = {batch_devices}")
  if gb >= 1 and gb % process_count:
    errors.append(f"train.global_batch_size={gb} must be divisible by the {process_count} processes")
  elif gb >= 1 and config.data.get("packing"):
    try:
      sampler.packing_groups(gb, process_count, config.data.get("packing_groups"))
    except ValueError as e:
      errors.append(str(e))
  _check_length(t, config.data, errors)
  if int(t.log_every) < 1:
    errors.append(f"train.log_every={t.log_every} must be >= 1")
  if not t.optimizer.lr or float(t.optimizer.lr) <= 0:
    errors.append(f"train.optimizer.lr={t.optimizer.lr} must be > 0")
  if not 0 <= float(t.optimizer.warmup_ratio) < 1:
    errors.append(f"train.optimizer.warmup_ratio={t.optimizer.warmup_ratio} must be in [0, 1)")
  if not t.trainable:
    errors.append("train.trainable is empty: nothing would train (stage 1: ('connector/',))")
  if int(config.checkpoint.every) < 1 or int(config.checkpoint.keep) < 1:
    errors.append(f"checkpoint.every={config.checkpoint.every} and checkpoint.keep="
                  f"{config.checkpoint.keep} must be >= 1")
  nv = config_lib.num_visual_tokens(mc) if mc.connector.type in connectors.connector_names() else 0
  if int(config.data.max_length) <= nv:
    errors.append(f"data.max_length={config.data.max_length} leaves no room for text after the "
                  f"{nv} visual tokens of connector {mc.connector.type!r}")
  if int(config.data.max_length) > mc.llm.max_position_embeddings:
    errors.append(f"data.max_length={config.data.max_length} exceeds "
                  f"model.llm.max_position_embeddings={mc.llm.max_position_embeddings}")
  image_size = config.data.get("image_size")
  if image_size and int(image_size) != mc.vision.image_size:
    errors.append(f"data.image_size={image_size} differs from model.vision.image_size="
                  f"{mc.vision.image_size}")
  try:
    sources = experiment.init_sources(config.init)
    missing = [k for k in ("vision", "llm") if not sources[k]]
    if missing and not config.init.allow_random:
      errors.append(f"init: no parameter source for {missing} and init.allow_random is False; set "
                    "init.vision='hf_clip:<dir>' and init.llm='hf_llama:<dir>' (stage 1) or "
                    "init.params_from='orbax:<stage-1 run>' (stage 2)")
  except ValueError as e:
    errors.append(str(e))
  if errors:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
  return mc

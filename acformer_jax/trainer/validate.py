"""Early config validation with messages that name the field and what was expected.

Spec: ``jax_practices.md`` item 13 (validate before anything expensive). Checked before
any device memory is touched: mesh size vs device count, batch divisibility by the batch
mesh axes (and by accumulation and hosts), the visual-token budget vs the ViT heads,
connector type, sequence length vs visual tokens, optimizer and schedule fields, the
trainable patterns and the init sources.
"""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence

from acformer_jax import config as config_lib
from acformer_jax.models import attention as attention_lib
from acformer_jax.models.layers import REMAT_POLICIES
from acformer_jax.trainer import experiment

logger = logging.getLogger("acformer_jax.trainer.validate")


class ConfigError(ValueError):
  """An invalid experiment config (the message lists every problem found)."""


def resolve_mesh_shape(shape: Sequence[int], dcn_shape: Sequence[int], num_devices: int,
                       errors: List[str]) -> Optional[tuple]:
  """The full ``(data, fsdp, tensor)`` sizes (ICI x DCN) with -1 resolved, or None."""
  shape, dcn = list(shape), list(dcn_shape)
  if len(shape) != 3 or len(dcn) != 3:
    errors.append(f"mesh.shape={tuple(shape)} and mesh.dcn_shape={tuple(dcn)} must have 3 entries "
                  "(data, fsdp, tensor)")
    return None
  if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1 or any(s < 1 for s in dcn):
    errors.append(f"mesh.shape={tuple(shape)}: sizes must be >= 1 with at most one -1; "
                  f"mesh.dcn_shape={tuple(dcn)} must be >= 1")
    return None
  slices = math.prod(dcn)
  if num_devices % slices:
    errors.append(f"mesh.dcn_shape={tuple(dcn)} needs the {num_devices} devices to split into "
                  f"{slices} equal slices")
    return None
  per_slice = num_devices // slices
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if per_slice % known:
      errors.append(f"mesh.shape={tuple(shape)}: {per_slice} devices per slice are not divisible "
                    f"by {known}")
      return None
    shape[shape.index(-1)] = per_slice // known
  if math.prod(shape) != per_slice:
    errors.append(f"mesh.shape={tuple(shape)} x dcn_shape={tuple(dcn)} needs "
                  f"{math.prod(shape) * slices} devices, but {num_devices} are available")
    return None
  return tuple(a * b for a, b in zip(shape, dcn))


def _check_model(mc: config_lib.ModelConfig, errors: List[str]) -> None:
  c, v, l = mc.connector, mc.vision, mc.llm
  if c.type not in config_lib.CONNECTOR_TYPES:
    errors.append(f"model.connector.type={c.type!r} is not one of {config_lib.CONNECTOR_TYPES}")
    return
  if c.type in ("acformer", "top_p"):
    if c.num_queries < v.num_heads:
      errors.append(f"model.connector.num_queries={c.num_queries} is below the ViT head count "
                    f"model.vision.num_heads={v.num_heads}: every head must contribute >= 1 anchor")
    elif v.num_heads * (c.num_queries // v.num_heads) > v.num_patches:
      errors.append(f"model.connector.num_queries={c.num_queries} exceeds the "
                    f"{v.num_patches} patches of the ViT")
    elif c.num_queries % v.num_heads:
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
  if mc.image_token_id < l.vocab_size and mc.image_token_id not in (0,):
    logger.warning("model.image_token_id=%d is inside the LLM vocabulary (%d): real text tokens "
                   "with that id would be replaced by visual tokens", mc.image_token_id, l.vocab_size)


def validate(config, *, num_devices: int, process_count: int = 1) -> config_lib.ModelConfig:
  """Checks an experiment config; returns its ModelConfig or raises :class:`ConfigError`."""
  errors: List[str] = []
  try:
    mc = config_lib.model_config_from_dict(config.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model: {e}") from e
  _check_model(mc, errors)

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
  if int(t.steps) < 1:
    errors.append(f"train.steps={t.steps} must be >= 1")
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
  nv = config_lib.num_visual_tokens(mc) if mc.connector.type in config_lib.CONNECTOR_TYPES else 0
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

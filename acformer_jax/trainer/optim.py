"""Optimizer: AdamW + warmup-cosine, global-norm clipping, trainable/frozen partition.

Spec: ``docs/method.md`` 2.1-2.2 (LLaVA-1.5: AdamW betas 0.9/0.999, eps 1e-8, linear warmup
over ``ceil(0.03 * steps)`` steps then cosine decay to 0, clip 1.0, decay excluding biases and
norm parameters) and ``docs/jax_practices.md`` item 12 (per-tower freezing by name pattern; frozen
parameters get no gradients and no optimizer state).

Parameters are addressed by their ``/``-joined path, e.g. ``llm/layers/mlp/up_proj/kernel``.
:func:`split_params` cuts the tree into a *trainable* and a *frozen* nested dict (disjoint
leaves); the optimizer only ever sees the trainable one.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence, Tuple

import optax
from flax import traverse_util

NO_DECAY_NAMES = ("bias", "scale")


def _flat(tree: Mapping) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: Mapping) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def compile_patterns(patterns: Iterable[str]) -> Tuple[re.Pattern, ...]:
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"train.trainable: {p!r} is not a valid regular expression ({e})") from e
  return tuple(out)


def is_trainable(path: str, patterns: Sequence[re.Pattern]) -> bool:
  """A parameter trains iff one pattern matches the start of its path (``re.match``)."""
  return any(p.match(path) for p in patterns)


def split_params(params: Mapping, patterns: Sequence[str]) -> Tuple[dict, dict]:
  """Splits a (possibly boxed) nested param dict into ``(trainable, frozen)``.

  Raises:
    ValueError: if no parameter matches (a typo would silently train nothing).
  """
  pats = compile_patterns(patterns)
  flat = _flat(params)
  train = {k: v for k, v in flat.items() if is_trainable(k, pats)}
  if not train:
    heads = sorted({k.split("/")[0] for k in flat})
    raise ValueError(f"train.trainable={list(patterns)} matches no parameter; top-level "
                     f"parameter groups are {heads}")
  frozen = {k: v for k, v in flat.items() if k not in train}
  return _unflat(train), _unflat(frozen)


def merge_params(a: Mapping, b: Mapping) -> dict:
  """Inverse of :func:`split_params` (the two trees must have disjoint leaves)."""
  fa, fb = _flat(a), _flat(b)
  clash = set(fa) & set(fb)
  if clash:
    raise ValueError(f"merge_params: overlapping leaves {sorted(clash)[:5]}")
  return _unflat({**fa, **fb})


def decay_mask(params: Mapping) -> dict:
  """True for leaves that get weight decay: everything except biases and norm scales."""
  flat = _flat(params)
  return _unflat({k: k.rsplit("/", 1)[-1] not in NO_DECAY_NAMES for k in flat})


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
  """HF ``get_warmup_steps``: ``ceil(ratio * total)``."""
  return int(math.ceil(warmup_ratio * total_steps))


def lr_schedule(peak_lr: float, total_steps: int, warmup_ratio: float = 0.03) -> optax.Schedule:
  """Linear warmup from 0 then cosine decay to 0, as HF's cosine schedule (step 0 has lr 0)."""
  if total_steps < 1:
    raise ValueError(f"train.steps must be >= 1, got {total_steps}")
  if not 0.0 <= warmup_ratio < 1.0:
    raise ValueError(f"train.optimizer.warmup_ratio must be in [0, 1), got {warmup_ratio}")
  warm = warmup_steps(total_steps, warmup_ratio)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warm,
      decay_steps=max(total_steps, warm + 1), end_value=0.0)


def make_optimizer(opt_cfg: Mapping[str, Any], total_steps: int
                   ) -> Tuple[optax.GradientTransformation, Callable]:
  """``(tx, schedule)`` from ``config.train.optimizer``.

  Fields: ``lr``, ``warmup_ratio`` (0.03), ``b1`` (0.9), ``b2`` (0.999), ``eps`` (1e-8),
  ``weight_decay`` (0.0), ``clip_norm`` (1.0; <= 0 disables clipping).
  """
  get = lambda k, d: opt_cfg.get(k, d) if hasattr(opt_cfg, "get") else getattr(opt_cfg, k, d)  # noqa: E731
  lr = get("lr", None)
  if lr is None or lr <= 0:
    raise ValueError(f"train.optimizer.lr must be > 0, got {lr}")
  schedule = lr_schedule(float(lr), total_steps, float(get("warmup_ratio", 0.03)))
  parts = []
  clip = float(get("clip_norm", 1.0))
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.adamw(schedule, b1=float(get("b1", 0.9)), b2=float(get("b2", 0.999)),
                           eps=float(get("eps", 1e-8)),
                           weight_decay=float(get("weight_decay", 0.0)), mask=decay_mask))
  return optax.chain(*parts), schedule

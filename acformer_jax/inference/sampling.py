"""Token samplers: pure functions of ``logits [B, V]`` (+ an rng key) -> ``int32 [B]``.

Spec: ``docs/benchmarks.md`` section 1 (greedy decoding for every benchmark; sampling off when the
temperature is 0) and ``docs/jax_practices.md`` item 11 (sampler registry: greedy, temperature,
top-k, top-p). The filters follow the usual order: temperature, then top-k, then top-p.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How the next token is chosen (hashable: used as a static jit argument).

  Attributes:
    temperature: 0 means greedy (argmax); > 0 samples from ``softmax(logits / T)``.
    top_k: keep only the ``k`` most likely tokens (0 = off).
    top_p: keep the smallest set of most likely tokens whose mass reaches ``p`` (1 = off).
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def is_greedy(self) -> bool:
    return self.temperature == 0.0


GREEDY = SamplerConfig()


def greedy(logits: jax.Array) -> jax.Array:
  """Argmax over the vocabulary (ties -> lowest id, like ``torch.argmax``)."""
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
  return logits.astype(jnp.float32) / temperature


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Sets every logit below the ``k``-th largest to ``-inf`` (``k`` static; 0 = off)."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, _NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keeps the most likely tokens until their mass reaches ``p``.

  A token survives iff the mass of the tokens strictly more likely than it is < ``p``,
  so the kept set is the smallest prefix (in descending probability) with mass >= ``p``;
  the most likely token is always kept. ``p`` may be a traced scalar.
  """
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = mass_before < p
  keep = jnp.zeros_like(keep_sorted).at[
      jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
  return jnp.where(keep, logits, _NEG_INF)


def filtered_logits(logits: jax.Array, config: SamplerConfig) -> jax.Array:
  """Temperature-scaled logits with the top-k / top-p filters applied (sampling only)."""
  x = apply_temperature(logits, config.temperature)
  x = top_k_filter(x, config.top_k)
  if config.top_p < 1.0:
    x = top_p_filter(x, config.top_p)
  return x


def sample(logits: jax.Array, rng: jax.Array, config: SamplerConfig = GREEDY) -> jax.Array:
  """Next tokens ``int32 [B]`` for ``logits [B, V]``; greedy when ``temperature == 0``."""
  if config.is_greedy:
    return greedy(logits)
  return jax.random.categorical(rng, filtered_logits(logits, config), axis=-1).astype(jnp.int32)

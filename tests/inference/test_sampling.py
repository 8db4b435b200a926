"""Distribution tests of the samplers (spec docs/jax_practices.md item 11, docs/benchmarks.md 1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax.inference import sampling

V = 12
N = 40000  # draws per distribution test


def _logits(seed=0):
  return np.random.RandomState(seed).normal(size=(V,)).astype(np.float32) * 1.5


def _draw(logits, config, seed=1):
  batch = jnp.broadcast_to(jnp.asarray(logits), (N, V))
  toks = jax.jit(sampling.sample, static_argnums=2)(batch, jax.random.PRNGKey(seed), config)
  return np.bincount(np.asarray(toks), minlength=V) / N


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def test_greedy_and_temperature_zero_are_argmax():
  logits = np.random.RandomState(3).normal(size=(5, V)).astype(np.float32)
  want = logits.argmax(-1)
  np.testing.assert_array_equal(sampling.greedy(jnp.asarray(logits)), want)
  got = sampling.sample(jnp.asarray(logits), jax.random.PRNGKey(0),
                        sampling.SamplerConfig(temperature=0.0, top_k=3, top_p=0.5))
  np.testing.assert_array_equal(got, want)


def test_temperature_matches_softmax_of_scaled_logits():
  logits = _logits()
  for t in (0.5, 2.0):
    freq = _draw(logits, sampling.SamplerConfig(temperature=t))
    np.testing.assert_allclose(freq, _softmax(logits / t), atol=0.01)
  # Low temperature concentrates on the argmax more than high temperature does.
  hot = _draw(logits, sampling.SamplerConfig(temperature=2.0))[logits.argmax()]
  cold = _draw(logits, sampling.SamplerConfig(temperature=0.5))[logits.argmax()]
  assert cold > hot + 0.1


def test_top_k_never_leaves_the_k_best_and_renormalises():
  logits = _logits(1)
  k = 4
  best = np.argsort(-logits)[:k]
  freq = _draw(logits, sampling.SamplerConfig(temperature=1.0, top_k=k))
  outside = np.setdiff1d(np.arange(V), best)
  assert freq[outside].sum() == 0
  want = np.zeros(V)
  want[best] = _softmax(logits[best])
  np.testing.assert_allclose(freq, want, atol=0.01)


@pytest.mark.parametrize("p", [0.3, 0.75, 0.95])
def test_top_p_keeps_the_smallest_prefix_reaching_p(p):
  logits = _logits(2)
  probs = _softmax(logits)
  kept = np.asarray(sampling.top_p_filter(jnp.asarray(logits)[None], p)[0]) > -np.inf
  order = np.argsort(-probs)
  n = kept.sum()
  assert set(np.flatnonzero(kept)) == set(order[:n])  # a prefix of the ranking
  assert probs[order[:n]].sum() >= p - 1e-6            # mass reaches p ...
  assert probs[order[:n - 1]].sum() < p                # ... and not without its last token
  freq = _draw(logits, sampling.SamplerConfig(temperature=1.0, top_p=p))
  assert freq[~kept].sum() == 0
  want = np.where(kept, probs, 0) / probs[kept].sum()
  np.testing.assert_allclose(freq, want, atol=0.01)


def test_top_p_always_keeps_the_best_token():
  logits = np.array([[5.0, 0.0, 0.0, 0.0]], np.float32)
  kept = np.asarray(sampling.top_p_filter(jnp.asarray(logits), 0.01))[0] > -np.inf
  np.testing.assert_array_equal(kept, [True, False, False, False])


def test_top_k_then_top_p_compose():
  logits = _logits(4)
  cfg = sampling.SamplerConfig(temperature=1.0, top_k=5, top_p=0.6)
  x = np.asarray(sampling.filtered_logits(jnp.asarray(logits)[None], cfg))[0]
  kept = np.flatnonzero(x > -np.inf)
  top5 = np.argsort(-logits)[:5]
  assert set(kept) <= set(top5)
  p5 = _softmax(logits[top5])
  m = int(np.searchsorted(np.cumsum(p5), 0.6) + 1)
  assert set(kept) == set(top5[:m])


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0),
                                dict(top_p=1.5)])
def test_bad_sampler_config_is_rejected(kw):
  with pytest.raises(ValueError, match=next(iter(kw))):
    sampling.SamplerConfig(**kw)

"""Dense matmul throughput of this machine, measured in-process (``docs/environment.md`` 4).

The MFU denominator on CPU: XLA has no vendor peak table for the host, so the peak is the
best rate of large square matmuls measured in the same process as the step (float32; bfloat16
is reported too: this CPU has no bf16 units and runs it far slower).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np


def matmul_runner(n: int, dtype) -> Callable[[], float]:
  """A compiled ``[n, n] @ [n, n]``; calling the result times one product (seconds)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype)
  b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()  # compile + warm up

  def run() -> float:
    t = time.perf_counter()
    f(a, b).block_until_ready()
    return time.perf_counter() - t
  return run


def measure(n: int = 2048, dtype=jnp.float32, reps: int = 5) -> Dict:
  """``{"n", "dtype", "best_flops", "median_flops", "samples_s"}`` for ``reps`` products."""
  run = matmul_runner(n, dtype)
  samples: List[float] = [run() for _ in range(reps)]
  return summary(n, dtype, samples)


def summary(n: int, dtype, samples) -> Dict:
  flop = 2.0 * n ** 3
  return {"n": n, "dtype": jnp.dtype(dtype).name, "best_flops": flop / min(samples),
          "median_flops": flop / float(np.median(samples)), "samples_s": list(samples)}

"""Interleaved wall-clock timing with a foreign-load monitor (``docs/environment.md`` 4-5).

The machine may be shared: every timed repetition also records how many CPU cores
*other* processes kept busy meanwhile (``/proc/stat`` busy time minus this process's own
rusage), so a report can say how quiet the measurement was and keep only quiet samples.
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import jax

QUIET_CORES = 0.25  # foreign load below this many cores counts as quiet


def _proc_busy_seconds() -> Optional[float]:
  """Busy CPU seconds of the whole machine since boot (None when /proc is unavailable)."""
  try:
    with open("/proc/stat") as f:
      fields = f.readline().split()[1:]
  except OSError:
    return None
  vals = [int(x) for x in fields]
  idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
  return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _self_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


class LoadProbe:
  """``with LoadProbe() as p: ...`` then ``p.foreign_cores`` (None if unknown) and ``p.wall``."""

  def __enter__(self):
    self._t, self._busy, self._self = time.perf_counter(), _proc_busy_seconds(), _self_seconds()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self._t
    busy = _proc_busy_seconds()
    own = _self_seconds() - self._self
    if busy is None or self._busy is None or self.wall <= 0:
      self.foreign_cores = None
    else:
      self.foreign_cores = max(0.0, (busy - self._busy - own) / self.wall)
    return False


def load_average() -> Optional[List[float]]:
  try:
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
  except OSError:
    return None


def summarize(samples: Sequence[float], foreign: Sequence[Optional[float]]) -> Dict:
  """Median/min over all samples and over the quiet ones (foreign load < QUIET_CORES)."""
  quiet = [s for s, f in zip(samples, foreign) if f is not None and f < QUIET_CORES]
  known = [f for f in foreign if f is not None]
  return {
      "median_s": statistics.median(samples), "min_s": min(samples), "samples_s": list(samples),
      "quiet_median_s": statistics.median(quiet) if len(quiet) >= 3 else None,
      "quiet_samples": len(quiet),
      "foreign_cores_median": statistics.median(known) if known else None,
  }


def wait_for_quiet(max_wait_s: float, threshold: float = QUIET_CORES, window_s: float = 1.0) -> bool:
  """Sleeps until other processes use fewer than ``threshold`` cores over ``window_s``
  (True), or ``max_wait_s`` has passed (False). Without /proc it returns True at once."""
  deadline = time.perf_counter() + max_wait_s
  while True:
    with LoadProbe() as p:
      time.sleep(window_s)
    if p.foreign_cores is None or p.foreign_cores < threshold:
      return True
    if time.perf_counter() >= deadline:
      return False


def interleaved(fns: Mapping[str, Callable[[], object]], *, reps: int, warmup: int = 1,
                log: Optional[Callable[[str], None]] = None,
                quiet_wait_s: float = 0.0) -> Dict[str, Dict]:
  """Times each zero-argument ``fn`` (which must block until its work is done).

  Every function first runs ``warmup`` times untimed (compilation included there). Then
  ``reps`` rounds run every function once, in an order rotated each round so no function
  always follows the same neighbour. With ``quiet_wait_s > 0`` each timed run first waits
  (up to that long) for the machine to be quiet. Returns per name :func:`summarize` output.
  """
  names = list(fns)
  for name in names:
    for _ in range(warmup):
      fns[name]()
  times = {n: [] for n in names}
  foreign = {n: [] for n in names}
  for r in range(reps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      if quiet_wait_s > 0 and not wait_for_quiet(quiet_wait_s) and log:
        log(f"still not quiet after {quiet_wait_s:.0f} s; timing anyway")
      with LoadProbe() as p:
        fns[name]()
      times[name].append(p.wall)
      foreign[name].append(p.foreign_cores)
      if log:
        f = "?" if p.foreign_cores is None else f"{p.foreign_cores:.2f}"
        log(f"rep {r + 1}/{reps} {name}: {p.wall:.3f} s (foreign load {f} cores)")
  return {n: summarize(times[n], foreign[n]) for n in names}


def blocking(fn: Callable, *args) -> Callable[[], object]:
  """``lambda: block_until_ready(fn(*args))``."""
  return lambda: jax.block_until_ready(fn(*args))

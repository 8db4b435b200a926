"""Multi-process start-up: ``jax.distributed`` with a deadline and a host check.

Spec: ``docs/jax_practices.md`` "What acformer_jax should adopt" items 2, 5, 6, 14 and the
multi-host start-up pain points of section 9.4 (a missing host must not hang the job);
``docs/environment.md`` section 3 (several CPU processes on one machine with gloo).

Settings come from, in order: explicit arguments, absl flags (``define_flags``), then
environment variables (``ACFORMER_COORDINATOR``, ``ACFORMER_NUM_PROCESSES``,
``ACFORMER_PROCESS_ID``, ``ACFORMER_LOCAL_DEVICE_COUNT``, ``ACFORMER_DISTRIBUTED``,
``ACFORMER_INIT_TIMEOUT_S``, ``ACFORMER_EXPECTED_DEVICES``). On Cloud TPU and SLURM
JAX finds the coordinator itself, so only ``ACFORMER_DISTRIBUTED=on`` is needed.

``python -m acformer_jax.distributed`` brings the cluster up, runs one cross-process
``psum`` and prints the topology: a cheap check before launching a real job.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import threading
import time
from typing import Mapping, Optional

from absl import flags

logger = logging.getLogger("acformer_jax.distributed")

ENV_PREFIX = "ACFORMER_"
MODES = ("auto", "on", "off")
DEFAULT_TIMEOUT_S = 300.0
# Exit status when start-up misses its deadline (the same code as coreutils timeout).
STARTUP_TIMEOUT_EXIT_CODE = 124


@dataclasses.dataclass(frozen=True)
class Settings:
  """Resolved start-up settings (None = let JAX decide / do not check)."""
  mode: str = "auto"
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_count: Optional[int] = None
  expected_devices: Optional[int] = None
  timeout_s: float = DEFAULT_TIMEOUT_S


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
  """What this process sees after start-up."""
  process_index: int
  process_count: int
  local_device_count: int
  global_device_count: int
  platform: str
  distributed: bool


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
  raw = env.get(ENV_PREFIX + name)
  if raw is None or raw == "":
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"environment variable {ENV_PREFIX}{name}={raw!r}: expected an integer") from None


def resolve_settings(mode: Optional[str] = None, coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None, process_id: Optional[int] = None,
                     local_device_count: Optional[int] = None,
                     expected_devices: Optional[int] = None, timeout_s: Optional[float] = None,
                     env: Optional[Mapping[str, str]] = None) -> Settings:
  """Merges arguments with ``ACFORMER_*`` environment variables and validates them."""
  env = os.environ if env is None else env
  mode = mode or env.get(ENV_PREFIX + "DISTRIBUTED") or "auto"
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r} (flag --distributed or {ENV_PREFIX}DISTRIBUTED): "
                     f"expected one of {MODES}")
  pick = lambda v, name: v if v is not None else _env_int(env, name)
  if timeout_s is None:
    raw = env.get(ENV_PREFIX + "INIT_TIMEOUT_S")
    try:
      timeout_s = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
      raise ValueError(f"environment variable {ENV_PREFIX}INIT_TIMEOUT_S={raw!r}: expected seconds") from None
  s = Settings(
      mode=mode,
      coordinator_address=coordinator_address or env.get(ENV_PREFIX + "COORDINATOR") or None,
      num_processes=pick(num_processes, "NUM_PROCESSES"),
      process_id=pick(process_id, "PROCESS_ID"),
      local_device_count=pick(local_device_count, "LOCAL_DEVICE_COUNT"),
      expected_devices=pick(expected_devices, "EXPECTED_DEVICES"),
      timeout_s=float(timeout_s))
  if s.timeout_s <= 0:
    raise ValueError(f"start-up timeout must be > 0 seconds, got {s.timeout_s}")
  if s.num_processes is not None and s.num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {s.num_processes}")
  if s.local_device_count is not None and s.local_device_count < 1:
    raise ValueError(f"local_device_count must be >= 1, got {s.local_device_count}")
  if s.process_id is not None and s.num_processes is not None and not 0 <= s.process_id < s.num_processes:
    raise ValueError(f"process_id={s.process_id} is outside 0..{s.num_processes - 1} "
                     f"(num_processes={s.num_processes})")
  if s.coordinator_address is not None and ":" not in s.coordinator_address:
    raise ValueError(f"coordinator address {s.coordinator_address!r}: expected host:port")
  return s


def _cluster_env_present(env: Mapping[str, str]) -> bool:
  """True under SLURM or Open MPI with several tasks (JAX auto-detects those)."""
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    try:
      if int(env.get(var, "1")) > 1:
        return True
    except ValueError:
      pass
  return False


def wants_distributed(s: Settings, env: Optional[Mapping[str, str]] = None) -> bool:
  """Whether ``jax.distributed.initialize`` should be called for these settings."""
  env = os.environ if env is None else env
  if s.mode != "auto":
    return s.mode == "on"
  if s.coordinator_address is not None or (s.num_processes or 1) > 1:
    return True
  return _cluster_env_present(env)


class _Deadline:
  """Kills the process with a clear message if start-up outlives ``timeout_s``.

  ``jax.distributed.initialize`` blocks in C++ until every process has registered
  and then aborts with a bare ``DEADLINE_EXCEEDED``; this guard fires first and says
  what was expected (the blocking call releases the GIL, so the thread can run).
  """

  def __init__(self, timeout_s: float, describe: str, rollcall=None):
    self._done = threading.Event()
    self._timeout_s = timeout_s
    self._describe = describe
    self._rollcall = rollcall  # names the missing process ids
    self._thread = threading.Thread(target=self._watch, name="acformer-startup-deadline", daemon=True)

  def _watch(self):
    if self._done.wait(self._timeout_s):
      return
    sys.stderr.write(
        f"\nERROR acformer_jax.distributed: start-up did not finish within {self._timeout_s:g} s "
        f"({self._describe}). Not every expected process joined"
        + (f"; {self._rollcall.summary()}" if self._rollcall is not None else "") +
        ": check that all processes were "
        "started with the same coordinator address and process count, that each has a distinct "
        "process id, and that the coordinator port is reachable. Exiting instead of hanging.\n")
    sys.stderr.flush()
    os._exit(STARTUP_TIMEOUT_EXIT_CODE)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    if self._rollcall is not None:
      self._rollcall.stop()


def _configure_cpu(s: Settings, distributed: bool) -> None:
  """Simulated CPU devices and gloo collectives; must run before JAX picks a backend."""
  import jax
  from jax._src import xla_bridge
  if distributed:
    # Cross-process CPU collectives (docs/environment.md section 3); only affects the CPU client.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if s.local_device_count is None:
    return
  if xla_bridge.backends_are_initialized():
    have = jax.local_device_count()
    if have != s.local_device_count:
      raise RuntimeError(
          f"local_device_count={s.local_device_count} was requested after JAX already started with "
          f"{have} local devices: call distributed.initialize() before any other JAX use")
    return
  jax.config.update("jax_num_cpu_devices", s.local_device_count)


def check_topology(expected_processes: Optional[int], expected_devices: Optional[int],
                   expected_local_devices: Optional[int] = None, devices=None,
                   process_count: Optional[int] = None) -> None:
  """Raises RuntimeError unless every expected process joined with its devices."""
  import jax
  devices = list(jax.devices() if devices is None else devices)
  process_count = jax.process_count() if process_count is None else process_count
  per_process = {}
  for d in devices:
    per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
  problems = []
  if expected_processes is not None and process_count != expected_processes:
    problems.append(f"{process_count} processes joined, expected {expected_processes}")
  missing = sorted(set(range(process_count)) - set(per_process))
  if missing:
    problems.append(f"processes {missing} contribute no devices")
  if len(set(per_process.values())) > 1:
    problems.append(f"processes have different device counts {dict(sorted(per_process.items()))}")
  if expected_local_devices is not None and any(n != expected_local_devices for n in per_process.values()):
    problems.append(f"device counts per process {dict(sorted(per_process.items()))}, "
                    f"expected {expected_local_devices} each")
  if expected_devices is not None and len(devices) != expected_devices:
    problems.append(f"{len(devices)} devices in total, expected {expected_devices}")
  if problems:
    raise RuntimeError("acformer_jax.distributed: cluster check failed: " + "; ".join(problems))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, local_device_count: Optional[int] = None,
               timeout_s: Optional[float] = None, mode: Optional[str] = None,
               expected_devices: Optional[int] = None) -> ProcessInfo:
  """Starts (multi-process) JAX and checks that every expected host joined.

  Call once, before any other JAX use. Arguments override the ``ACFORMER_*``
  environment; see the module docstring. A single process with no cluster settings
  just applies ``local_device_count`` and returns.

  Args:
    coordinator_address: ``host:port`` of process 0 (needed on CPU/GPU without SLURM).
    num_processes: number of processes in the job.
    process_id: this process's index, ``0..num_processes-1``.
    local_device_count: simulated CPU devices per process (CPU backend only); also
      checked as the per-process device count when the backend is CPU.
    timeout_s: start-up deadline; past it the process exits with status
      ``STARTUP_TIMEOUT_EXIT_CODE`` and a message naming what was expected.
    mode: ``auto`` (initialize when a coordinator, several processes or a SLURM/MPI
      job is seen), ``on`` (always; JAX auto-detects Cloud TPU / SLURM) or ``off``.
    expected_devices: if given, the global device count that must be seen.

  Returns:
    A ``ProcessInfo`` describing this process and the cluster.
  """
  s = resolve_settings(mode, coordinator_address, num_processes, process_id,
                       local_device_count, expected_devices, timeout_s)
  distributed = wants_distributed(s)
  import jax
  _configure_cpu(s, distributed)
  describe = (f"process {s.process_id if s.process_id is not None else '?'} of "
              f"{s.num_processes or '?'}, coordinator {s.coordinator_address or 'auto-detected'}")
  t0 = time.time()
  rollcall = None
  if distributed and s.coordinator_address and s.num_processes and s.process_id is not None:
    from acformer_jax.rollcall import RollCall  # pylint: disable=import-outside-toplevel
    rollcall = RollCall(s.coordinator_address, s.num_processes, s.process_id).start()
  with _Deadline(s.timeout_s, describe, rollcall):
    if distributed:
      try:
        jax.distributed.initialize(
            coordinator_address=s.coordinator_address, num_processes=s.num_processes,
            process_id=s.process_id, initialization_timeout=int(math.ceil(s.timeout_s)) + 10)
      except ValueError as e:  # JAX found no cluster to fill in the missing settings
        raise ValueError(
            f"distributed start-up ({describe}): {e} No cluster environment (Cloud TPU, SLURM, "
            f"Open MPI) supplied it: set {ENV_PREFIX}COORDINATOR (host:port of process 0), "
            f"{ENV_PREFIX}NUM_PROCESSES and {ENV_PREFIX}PROCESS_ID, or the matching flags") from e
    devices = jax.devices()  # backend start-up also waits for the peers
  platform = devices[0].platform
  check_topology(s.num_processes, s.expected_devices,
                 s.local_device_count if platform == "cpu" else None, devices=devices)
  info = ProcessInfo(process_index=jax.process_index(), process_count=jax.process_count(),
                     local_device_count=jax.local_device_count(), global_device_count=len(devices),
                     platform=platform, distributed=distributed)
  log0("distributed start-up: %d process(es), %d devices (%s), %d per process, %.1f s",
       info.process_count, info.global_device_count, platform, info.local_device_count,
       time.time() - t0)
  return info


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers the start-up flags on ``flag_values`` (idempotent); CLIs opt in."""
  def once(kind, name, *args, **kwargs):
    if name not in flag_values:
      kind(name, *args, flag_values=flag_values, **kwargs)
  once(flags.DEFINE_enum, "distributed", None, list(MODES),
       f"Multi-process start-up; default from {ENV_PREFIX}DISTRIBUTED, else auto.")
  once(flags.DEFINE_string, "coordinator_address", None,
       f"host:port of process 0 (default {ENV_PREFIX}COORDINATOR; auto on TPU/SLURM).")
  once(flags.DEFINE_integer, "num_processes", None, f"Process count (default {ENV_PREFIX}NUM_PROCESSES).")
  once(flags.DEFINE_integer, "process_id", None, f"This process's id (default {ENV_PREFIX}PROCESS_ID).")
  once(flags.DEFINE_integer, "local_device_count", None,
       f"Simulated CPU devices per process (default {ENV_PREFIX}LOCAL_DEVICE_COUNT).")
  once(flags.DEFINE_float, "distributed_timeout_s", None,
       f"Start-up deadline in seconds (default {ENV_PREFIX}INIT_TIMEOUT_S or {DEFAULT_TIMEOUT_S:g}).")


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ProcessInfo:
  """``initialize`` with the values of the flags from ``define_flags``."""
  f = flag_values
  return initialize(coordinator_address=f.coordinator_address, num_processes=f.num_processes,
                    process_id=f.process_id, local_device_count=f.local_device_count,
                    timeout_s=f.distributed_timeout_s, mode=f.distributed)


def is_host0() -> bool:
  import jax
  return jax.process_index() == 0


def log0(msg: str, *args, level: int = logging.INFO) -> None:
  """Logs only on process 0 (every host runs the same program; one copy is enough)."""
  if is_host0():
    logging.getLogger("acformer_jax").log(level, msg, *args)


def print0(*args, **kwargs) -> None:
  """``print`` on process 0 only."""
  if is_host0():
    print(*args, **kwargs)


def _smoke_check() -> float:
  """One cross-process psum over all devices; returns the sum (= device count)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.asarray(jax.devices()), ("all",))
  ones = jax.make_array_from_process_local_data(
      NamedSharding(mesh, P("all")), np.ones((jax.local_device_count(),), np.float32))
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(ones)
  return float(total.addressable_data(0))


def main(argv) -> None:
  del argv
  info = initialize_from_flags()
  total = _smoke_check()
  if total != info.global_device_count:
    raise SystemExit(f"cross-process sum gave {total}, expected {info.global_device_count}")
  print(f"process {info.process_index}/{info.process_count}: {info.local_device_count} local, "
        f"{info.global_device_count} global {info.platform} devices; psum ok", flush=True)


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)

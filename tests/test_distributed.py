"""Multi-process start-up on one machine (docs/environment.md section 3; docs/jax_practices.md 2, 5, 6, 14).

The multi-process tests start real JAX processes (this file doubles as the worker
script: ``python tests/test_distributed.py worker ...``) talking over gloo on free
local ports, and a real Orbax checkpoint in a shared directory.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST0_MARK = "HOST0-ONLY-LOG-LINE"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _spawn(*args, extra_env=None):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.update(extra_env or {})
  return subprocess.Popen([sys.executable, __file__, *map(str, args)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ----------------------------------------------------------------------------- worker side

def _worker(process_id: int, port: int, ckpt_dir: str, out_json: str) -> None:
  from acformer_jax import distributed
  info = distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                process_id=process_id, local_device_count=4, timeout_s=60)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec as P
  from acformer_jax import sharding

  mesh = sharding.make_mesh((2, 4, 1))
  # Each process holds its own 4 rows of the global (8, 16) batch, as the data pipeline will.
  full_x = np.arange(8 * 16, dtype=np.float32).reshape(8, 16) / 100.0
  full_w = np.cos(np.arange(16 * 6, dtype=np.float32)).reshape(16, 6)
  local_x = full_x[4 * process_id: 4 * process_id + 4]
  x_sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
  x = jax.make_array_from_process_local_data(x_sharding, local_x, (8, 16))
  w = jax.device_put(full_w, NamedSharding(mesh, P("fsdp", "tensor")))

  psum = jax.jit(jax.shard_map(lambda b: jax.lax.psum(b.sum(), ("data", "fsdp")),
                               mesh=mesh, in_specs=P(("data", "fsdp"), None), out_specs=P()))(x)
  y = jax.jit(lambda a, b: jnp.tanh(a @ b), out_shardings=x_sharding)(x, w)
  y_all = multihost_utils.process_allgather(y, tiled=True)

  # Orbax: both processes write their shards into one shared directory, then restore
  # onto a different sharding (rows over 'data' only, w replicated).
  # Scalars must be global (replicated) arrays too: a single-device array cannot be saved
  # from several processes.
  step = jax.device_put(np.int32(7), NamedSharding(mesh, P()))
  state = {"x": x, "w": w, "step": step}
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(ckpt_dir, "state"), state)
  ckptr.wait_until_finished()
  target = {
      "x": jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P("data", None))),
      "w": jax.ShapeDtypeStruct((16, 6), jnp.float32, sharding=NamedSharding(mesh, P())),
      "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
  }
  restored = ckptr.restore(os.path.join(ckpt_dir, "state"), target)
  rx = multihost_utils.process_allgather(restored["x"], tiled=True)
  distributed.log0(HOST0_MARK, level=30)  # WARNING, so it prints without absl set-up
  distributed.print0(HOST0_MARK)
  result = {
      "process_index": info.process_index, "process_count": info.process_count,
      "local_devices": info.local_device_count, "global_devices": info.global_device_count,
      "psum": float(psum), "psum_expected": float(full_x.sum()),
      "matmul_err": float(np.abs(np.asarray(y_all) - np.tanh(full_x @ full_w)).max()),
      "restore_err_x": float(np.abs(np.asarray(rx) - full_x).max()),
      "restore_err_w": float(np.abs(np.asarray(restored["w"].addressable_data(0)) - full_w).max()),
      "restore_step": int(restored["step"].addressable_data(0)),
      "restored_x_spec": list(restored["x"].sharding.spec),
  }
  with open(out_json, "w") as f:
    json.dump(result, f)


def _lonely(process_id: int, port: int, timeout_s: float, num_processes: int = 2) -> None:
  from acformer_jax import distributed
  distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                         process_id=process_id, local_device_count=4, timeout_s=timeout_s)
  print("UNEXPECTED: start-up returned", flush=True)


# ----------------------------------------------------------------------------- tests

@pytest.mark.multiprocess
def test_two_processes_global_arrays_collectives_and_orbax(tmp_path):
  port = _free_port()
  procs = [_spawn("worker", i, port, tmp_path / "ckpt", tmp_path / f"out{i}.json") for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=120))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"worker failed (rc={p.returncode}):\n{out}\n{err[-4000:]}"
  results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
  for i, r in enumerate(results):
    assert r["process_index"] == i
    assert (r["process_count"], r["local_devices"], r["global_devices"]) == (2, 4, 8)
    assert r["psum"] == pytest.approx(r["psum_expected"], rel=1e-6)
    assert r["matmul_err"] < 1e-5
    assert r["restore_err_x"] == 0.0 and r["restore_err_w"] == 0.0
    assert r["restore_step"] == 7
    assert r["restored_x_spec"] == ["data", None]
  # Host-0-only logging: the mark shows up in process 0's output (print and log) only.
  assert outs[0][0].count(HOST0_MARK) == 1 and HOST0_MARK in outs[0][1]
  assert HOST0_MARK not in outs[1][0] + outs[1][1]


@pytest.mark.multiprocess
def test_missing_process_fails_fast_with_clear_error():
  """Process 1 never starts (and, separately, the coordinator never starts; and no coordinator
  is configured at all)."""
  timeout_s = 4.0
  t0 = time.time()
  procs = {
      "coordinator_alone": _spawn("lonely", 0, _free_port(), timeout_s),
      "worker_alone": _spawn("lonely", 1, _free_port(), timeout_s),
  }
  no_coordinator = subprocess.Popen(
      [sys.executable, "-m", "acformer_jax.distributed"], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), ACFORMER_DISTRIBUTED="on"))
  outs = {}
  try:
    for name, p in procs.items():
      outs[name] = p.communicate(timeout=60)
    _, err = no_coordinator.communicate(timeout=60)
    assert no_coordinator.returncode == 1 and "set ACFORMER_COORDINATOR (host:port of process 0)" in err, err
  finally:
    for p in [*procs.values(), no_coordinator]:
      if p.poll() is None:
        p.kill()
  elapsed = time.time() - t0
  for name, p in procs.items():
    out, err = outs[name]
    assert p.returncode == 124, f"{name}: rc={p.returncode}\n{out}\n{err[-3000:]}"
    assert "UNEXPECTED" not in out
    assert f"start-up did not finish within {timeout_s:g} s" in err, err[-3000:]
    assert "of 2, coordinator 127.0.0.1:" in err
  # Deadline + interpreter/JAX import, with slack for a loaded 2-core machine; not 300 s.
  assert elapsed < timeout_s + 50, elapsed


@pytest.mark.multiprocess
def test_startup_timeout_names_the_missing_process_ids():
  """Processes 0 and 2 of 3 start, process 1 never does: both name it."""
  timeout_s, port = 6.0, _free_port()
  env = {"ACFORMER_ROLLCALL_PORT": str(_free_port())}
  procs = [_spawn("lonely", i, port, timeout_s, 3, extra_env=env) for i in (0, 2)]
  try:
    outs = [p.communicate(timeout=90) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 124, f"rc={p.returncode}\n{out}\n{err[-3000:]}"
    assert "missing process ids: [1] (joined: [0, 2])" in err, err[-3000:]
  # Without process 0 a worker says so.
  lone = _spawn("lonely", 1, _free_port(), 3.0, 2)
  _, err = lone.communicate(timeout=90)
  assert "missing process ids include [0]" in err, err[-3000:]


def test_resolve_settings_env_and_errors():
  from acformer_jax import distributed as d
  env = {"ACFORMER_COORDINATOR": "10.0.0.1:1234", "ACFORMER_NUM_PROCESSES": "4",
         "ACFORMER_PROCESS_ID": "3", "ACFORMER_LOCAL_DEVICE_COUNT": "2", "ACFORMER_INIT_TIMEOUT_S": "9"}
  s = d.resolve_settings(env=env)
  assert (s.coordinator_address, s.num_processes, s.process_id, s.local_device_count, s.timeout_s) == (
      "10.0.0.1:1234", 4, 3, 2, 9.0)
  assert d.wants_distributed(s, env={})
  s2 = d.resolve_settings(process_id=0, coordinator_address="h:1", env=env)  # arguments win
  assert (s2.process_id, s2.coordinator_address) == (0, "h:1")
  assert not d.wants_distributed(d.resolve_settings(env={}), env={})
  assert d.wants_distributed(d.resolve_settings(env={}), env={"SLURM_NTASKS": "8"})
  assert not d.wants_distributed(d.resolve_settings(mode="off", env=env), env={})
  with pytest.raises(ValueError, match="ACFORMER_NUM_PROCESSES='two'"):
    d.resolve_settings(env={"ACFORMER_NUM_PROCESSES": "two"})
  with pytest.raises(ValueError, match="process_id=4 is outside 0..3"):
    d.resolve_settings(env=dict(env, ACFORMER_PROCESS_ID="4"))
  with pytest.raises(ValueError, match="expected host:port"):
    d.resolve_settings(coordinator_address="nohost", env={})
  with pytest.raises(ValueError, match="expected one of"):
    d.resolve_settings(mode="sometimes", env={})


def test_check_topology_reports_missing_hosts():
  import jax
  from acformer_jax import distributed as d
  d.check_topology(1, 8, 8)  # this pytest process: 1 process x 8 simulated devices
  with pytest.raises(RuntimeError, match="1 processes joined, expected 2"):
    d.check_topology(2, None)
  with pytest.raises(RuntimeError, match="8 devices in total, expected 16"):
    d.check_topology(None, 16)
  with pytest.raises(RuntimeError, match=r"processes \[1\] contribute no devices"):
    d.check_topology(None, None, devices=jax.devices(), process_count=2)


def test_flags_are_opt_in_and_idempotent():
  from absl import flags
  from acformer_jax import distributed as d
  fv = flags.FlagValues()
  d.define_flags(fv)
  d.define_flags(fv)  # a second CLI module opting in must not clash
  fv(["prog", "--num_processes=2", "--process_id=1", "--coordinator_address=h:9", "--distributed=on"])
  assert (fv.num_processes, fv.process_id, fv.coordinator_address, fv.distributed) == (2, 1, "h:9", "on")
  assert fv.local_device_count is None and fv.distributed_timeout_s is None


if __name__ == "__main__":
  kind = sys.argv[1]
  if kind == "worker":
    _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
  elif kind == "lonely":
    _lonely(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), *map(int, sys.argv[5:6]))
  else:
    raise SystemExit(f"unknown worker kind {kind!r}")

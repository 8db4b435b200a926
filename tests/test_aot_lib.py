"""AOT topology plumbing (docs/aot_tpu.md): names, report math, executables; libtpu parts if installed."""
import importlib.metadata
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from acformer_jax import aot_lib

needs_libtpu = pytest.mark.skipif(
    not aot_lib.libtpu_available(),
    reason="libtpu is not installed (optional [tpu] extra: pip install \"jax[tpu]==0.10.2\"); "
           "the compile-only TPU topology tests need it")


@pytest.mark.parametrize("name,libtpu_name,chips", [
    ("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16), ("v4-128", "v4:4x4x4", 64),
    ("v5p-8", "v5:2x2x1", 4), ("v5p-16", "v5:2x2x2", 8), ("v5p-32", "v5:2x2x4", 16),
    ("v5p-64", "v5:2x4x4", 32), ("v5p-512", "v5:4x8x8", 256),
    ("v5e-4", "v5e:2x2", 4), ("v5e-8", "v5e:2x4", 8), ("v5e-16", "v5e:4x4", 16),
    ("v5litepod-32", "v5e:4x8", 32), ("v5e-64", "v5e:8x8", 64), ("v5e-256", "v5e:16x16", 256),
    ("v6e-16", "v6e:4x4", 16), ("v6e-256", "v6e:16x16", 256),
])
def test_topology_names(name, libtpu_name, chips):
  t = aot_lib.parse_topology(name)
  assert (t.libtpu_name, t.chips_per_slice, t.num_chips) == (libtpu_name, chips, chips)
  kw = dict(t.kwargs)
  if t.generation in ("v4", "v5p"):
    assert kw["chip_config_name"] == "megacore" and kw["chips_per_host_bounds"] == (2, 2, 1)
  assert aot_lib.parse_topology(name, num_slices=4).num_chips == 4 * chips


def test_topology_name_errors():
  with pytest.raises(ValueError, match="unknown TPU topology 'v7-8'"):
    aot_lib.parse_topology("v7-8")
  with pytest.raises(ValueError, match="'v5e-12' has no slice shape; valid sizes look like v5e-1, v5e-4"):
    aot_lib.parse_topology("v5e-12")
  with pytest.raises(ValueError, match="'v5p-24' has no slice shape"):
    aot_lib.parse_topology("v5p-24")
  with pytest.raises(ValueError, match="num_slices must be >= 1"):
    aot_lib.parse_topology("v5p-8", num_slices=0)


def test_mfu_and_analytic_flops():
  # 7B-class: 6.5e9 matmul params, 32 layers x 4096, batch 16 x 2048 on 16 v5e chips at 10 s/step.
  f = aot_lib.transformer_flops(6.5e9, 32, 4096, 2048, 16)
  tokens = 2048 * 16
  assert f == pytest.approx(6 * 6.5e9 * tokens + 3 * 2 * 32 * 2048 ** 2 * 4096 * 16)
  assert aot_lib.transformer_flops(1e6, 2, 64, 128, 2, backward=False, causal=False) == pytest.approx(
      2 * 1e6 * 256 + 4 * 2 * 128 ** 2 * 64 * 2)
  assert aot_lib.mfu(f, 10.0, 16, aot_lib.CHIPS["v5e"].peak_bf16_flops) == pytest.approx(f / (10 * 16 * 197e12))
  with pytest.raises(ValueError):
    aot_lib.mfu(f, 0.0, 16, 1.0)


def test_analytic_flops_match_xla_count_of_unrolled_cpu_step():
  """docs/aot_tpu.md section 3: take FLOPs analytically; check the formula against XLA's CPU count."""
  L, d, h, mlp, V, S, B = 2, 128, 4, 512, 256, 128, 2

  def loss(p, ids):
    x = p["emb"][ids]
    for l in range(L):
      q, k, v = (t.reshape(B, S, h, d // h) for t in jnp.split(x @ p["wqkv"][l], 3, -1))
      s = jnp.einsum("bqhd,bkhd->bhqk", q, k)
      a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(B, S, d)
      x = x + a @ p["wo"][l]
      x = x + jax.nn.gelu(x @ p["w1"][l]) @ p["w2"][l]
    return -jnp.mean(jax.nn.log_softmax(x @ p["out"])[..., 0])

  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  p = dict(emb=f32(V, d), wqkv=f32(L, d, 3 * d), wo=f32(L, d, d), w1=f32(L, d, mlp), w2=f32(L, mlp, d), out=f32(d, V))
  xla = jax.jit(jax.grad(loss)).lower(p, jax.ShapeDtypeStruct((B, S), jnp.int32)).compile().cost_analysis()["flops"]
  matmul_params = L * (4 * d * d + 2 * d * mlp) + d * V
  ana = aot_lib.transformer_flops(matmul_params, L, d, S, B, causal=False)  # this model masks nothing
  assert 1.0 <= xla / ana < 1.05, (xla, ana)  # the rest is softmax/gelu/elementwise work


def _tiny_step(mesh):
  step = jax.jit(lambda s, x: (jax.tree.map(lambda a: a - 0.1 * jnp.tanh(x @ a).sum(), s), (x @ s["w"]).sum()),
                 donate_argnums=0)
  state = {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", "tensor")))}
  x = jax.ShapeDtypeStruct((32, 64), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
  return step, (state, x)


def test_compile_report_memory_math_on_cpu():
  mesh = aot_lib.build_mesh(jax.devices(), (2, -1, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  step, args = _tiny_step(mesh)
  r = aot_lib.compile_report(step, args, chip="v5e", num_chips=8, flops_per_step=4e12, step_time_s=2.0)
  # Per device: w is 64x64 f32 over fsdp=4 (4096 B), x is 32x64 f32 over 8 devices (1024 B).
  assert (r.argument_bytes, r.alias_bytes) == (5120, 4096)
  assert 4096 + 4 <= r.output_bytes <= 4096 + 4 + 32  # + the scalar loss (+ a tuple table)
  assert r.total_bytes == r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes
  assert r.fits and r.oom_message is None and r.hbm_bytes == int(15.75 * 2 ** 30)
  assert r.mfu == pytest.approx(4e12 / (2.0 * 8 * 197e12))
  assert "FITS" in r.format() and "MFU" in r.format()
  # temp_bytes depends on the compiler version, so every report names it.
  assert r.versions["jax"] == jax.__version__ and f"jax {jax.__version__}" in r.format()
  assert json.loads(json.dumps(r.to_dict()))["argument_bytes"] == 5120
  assert json.loads(json.dumps(r.to_dict()))["versions"]["jaxlib"] == importlib.metadata.version("jaxlib")
  small = aot_lib.ChipSpec("tiny", "cpu", 8192, 8192, 1e12, "test chip")
  r2 = aot_lib.compile_report(step, args, chip=small, num_chips=8)
  assert not r2.fits and r2.total_bytes > 8192 and "DOES NOT FIT" in r2.format()


def test_build_mesh_errors():
  with pytest.raises(ValueError, match="needs 6 devices, but 8 are available"):
    aot_lib.build_mesh(jax.devices(), (2, 3, 1))
  with pytest.raises(ValueError, match="at most one -1"):
    aot_lib.build_mesh(jax.devices(), (-1, -1, 1))


@pytest.fixture
def no_persistent_cache():
  """A CPU executable served from conftest's persistent compile cache loses its runtime
  symbols when re-serialised; TPU executables never come from that cache."""
  prev = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", prev)


def test_save_load_executable_roundtrip_on_cpu(tmp_path, no_persistent_cache):
  mesh = aot_lib.build_mesh(jax.devices(), (2, -1, 1))
  # No transcendental ops: a CPU executable served from conftest's persistent cache loses
  # its runtime symbols (e.g. wrapped_tanh) when re-serialised; TPU ones never come from it.
  step = jax.jit(lambda s, x: ({"w": s["w"] - 0.1 * (x @ s["w"]).sum()}, (x @ s["w"]).sum()), donate_argnums=0)
  _, (state_abs, x_abs) = _tiny_step(mesh)
  compiled = step.lower(state_abs, x_abs).compile()
  path = str(tmp_path / "step.exe")
  aot_lib.save_executable(compiled, path, {"topology": "cpu-8"})
  loaded = aot_lib.load_executable(path)
  rng = np.random.default_rng(0)
  w, x = rng.normal(size=(64, 64)).astype(np.float32), rng.normal(size=(32, 64)).astype(np.float32)
  put = lambda: ({"w": jax.device_put(w, state_abs["w"].sharding)}, jax.device_put(x, x_abs.sharding))
  want, got = compiled(*put()), loaded(*put())
  np.testing.assert_array_equal(np.asarray(got[0]["w"]), np.asarray(want[0]["w"]))
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  side = json.loads(open(path + ".json").read())
  assert side["metadata"] == {"topology": "cpu-8"} and side["versions"]["jax"] == jax.__version__
  # A changed byte and a foreign jax version are refused with the offending field named.
  side["versions"]["jax"] = "0.0.1"
  open(path + ".json", "w").write(json.dumps(side))
  with pytest.raises(ValueError, match=r"compiled with jax==0\.0\.1"):
    aot_lib.load_executable(path)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="SHA-256 does not match"):
    aot_lib.load_executable(path)


def test_topology_devices_without_libtpu_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(aot_lib, "libtpu_available", lambda: False)
  with pytest.raises(RuntimeError, match=r"needs libtpu.*\[tpu\] extra"):
    aot_lib.topology_devices("v5e-16")


# ----------------------------------------------------------------------------- with libtpu

@needs_libtpu
@pytest.mark.parametrize("name", ["v4-8", "v5p-16", "v5e-4", "v6e-8"])
def test_libtpu_builds_each_generation(name):
  t = aot_lib.parse_topology(name)
  devices = aot_lib.topology_devices(name)
  assert len(devices) == t.num_chips and devices[0].device_kind == t.chip.device_kind


@needs_libtpu
def test_v5e16_compile_report_and_oversized_does_not_fit(tmp_path):
  mesh = aot_lib.get_topology_mesh("v5e-16", (1, -1, 1))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1}
  assert mesh.devices.flat[0].platform == "tpu"
  step = jax.jit(lambda w, x: (w - 1e-3 * (x.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)).sum(), x.sum()),
                 donate_argnums=0)
  w = jax.ShapeDtypeStruct((4096, 4096), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
  x = jax.ShapeDtypeStruct((256, 4096), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
  r = aot_lib.compile_report(step, (w, x), chip="v5e", num_chips=16, target="v5e-16")
  assert r.fits, r.format()
  assert r.argument_bytes == (4096 * 4096 * 4 + 256 * 4096 * 4) // 16
  assert r.alias_bytes == 4096 * 4096 * 4 // 16 and r.temp_bytes > 0
  assert r.total_bytes == r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes
  aot_lib.save_executable(r.compiled, str(tmp_path / "v5e16.exe"), {"topology": "v5e-16"})
  assert json.loads(open(tmp_path / "v5e16.exe.json").read())["versions"]["libtpu"].startswith("0.0.")
  # 8 GiB replicated on every chip, three live copies: libtpu's compile-time HBM OOM.
  big = jax.ShapeDtypeStruct((2 ** 21, 1024), jnp.float32, sharding=NamedSharding(mesh, P()))
  r2 = aot_lib.compile_report(jax.jit(lambda a: (a * 2, a + 1, a - 3)), (big,), chip="v5e", num_chips=16)
  assert not r2.fits and "RESOURCE_EXHAUSTED" in r2.oom_message and "15.75G" in r2.oom_message
  assert "DOES NOT FIT" in r2.format()


@needs_libtpu
def test_multislice_mesh_puts_data_axis_across_slices():
  mesh = aot_lib.get_topology_mesh("v5e-16", (2, -1, 1), num_slices=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 16, "tensor": 1}
  for i in range(2):
    assert {d.slice_index for d in mesh.devices[i].flat} == {i}
  with pytest.raises(ValueError, match="must be a multiple of num_slices=2"):
    aot_lib.get_topology_mesh("v5e-16", (1, -1, 1), num_slices=2)

"""``python -m acformer_jax.aot``: the trainer's real train step compiled for TPU topologies on CPU.

Spec: ``docs/aot_tpu.md`` sections 2-3 (compile-only libtpu devices, per-chip memory, analytic
FLOPs) and ``docs/jax_practices.md`` item 14. The compile tests need libtpu in the running
interpreter (the ``.venv-tpu`` environment, see docs/aot.md) and are skipped without it:

  JAX_PLATFORMS=cpu PYTHONPATH=. .venv-tpu/bin/python -m pytest -q tests/test_aot.py
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from acformer_jax import aot_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_acformer_stage2.py")
needs_libtpu = pytest.mark.skipif(
    not aot_lib.libtpu_available(),
    reason="libtpu is not importable in this interpreter; run from .venv-tpu (launch/setup_tpu_aot.sh)")


def aot(*args, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "acformer_jax.aot", "--config", TINY,
                         "--config.init.allow_random=True", *map(str, args)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_bad_topology_and_mesh_are_clear_errors():
  p = aot("--topology", "v5q-32")
  assert p.returncode == 2, p.stderr[-2000:]
  assert "--topology" in p.stderr and "v5p-N" in p.stderr
  # The tiny config's (4, 2, 1) mesh needs 8 devices; v5e-16 has 16 chips.
  p = aot("--topology", "v5e-16")
  assert p.returncode == 2, p.stderr[-2000:]
  assert "v5e-16" in p.stderr and "mesh.shape=(4, 2, 1)" in p.stderr and "16" in p.stderr


@pytest.mark.skipif(aot_lib.libtpu_available(), reason="libtpu is installed here")
def test_without_libtpu_points_to_the_tpu_environment():
  p = aot("--topology", "v5e-16", "--config.mesh.shape=(4,4,1)")
  assert p.returncode == 2 and "libtpu" in p.stderr and ".venv-tpu" in p.stderr, p.stderr[-2000:]


@needs_libtpu
def test_tiny_train_step_compiles_for_v5e_16(tmp_path):
  from acformer_jax import config as config_lib
  from acformer_jax.trainer import flops as flops_lib
  out, exe = tmp_path / "report.json", tmp_path / "step.exe"
  p = aot("--topology", "v5e-16", "--config.mesh.shape=(4,4,1)", "--step_time_s", "0.5",
          "--json_out", out, "--save_executable", exe)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert "FITS" in p.stdout and "temporaries" in p.stdout and "of 15.75 GiB HBM" in p.stdout
  res = json.loads(out.read_text())
  r = res["report"]
  assert res["topology"] == "v5e-16" and res["mesh"] == {"data": 4, "fsdp": 4, "tensor": 1}
  assert res["num_hosts"] == 4 and res["per_chip_batch"] == res["global_batch"] / 16
  assert r["fits"] and r["num_chips"] == 16 and r["hbm_bytes"] == aot_lib.CHIPS["v5e"].usable_hbm_bytes
  assert r["versions"]["libtpu"] and f"libtpu {r['versions']['libtpu']}" in p.stdout
  assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"]
  # The donated train state is an argument and fully aliased by the new state.
  assert r["argument_bytes"] >= res["state_bytes_per_chip"] > 0
  assert r["alias_bytes"] >= res["state_bytes_per_chip"] and r["temp_bytes"] > 0
  # FLOPs are the trainer's analytic count for this config (stage 2: the LLM trains).
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny_cfg", TINY)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  mc = config_lib.model_config_from_dict(cfg.model)
  from acformer_jax import batch as B
  m = B.images_per_row(cfg.data)
  rows = cfg.train.global_batch_size
  assert res["global_batch"] == rows
  want = flops_lib.train_step_flops(mc, rows, cfg.data.max_length, llm_trainable=True,
                                    images_per_row=m)
  assert res["token_slots"] == rows * cfg.data.max_length and res["images_per_row"] == m
  assert res["flops"]["total"] == pytest.approx(want.total, rel=1e-12)
  assert r["mfu"] == pytest.approx(want.total / (0.5 * 16 * 197e12), rel=1e-9)
  side = json.loads((tmp_path / "step.exe.json").read_text())
  assert exe.stat().st_size > 0 and side["metadata"]["topology"] == "v5e-16"
  assert side["versions"]["libtpu"]


@needs_libtpu
def test_oversized_config_does_not_fit_v5e_4():
  # A 40M-entry vocabulary: embedding + LM head with Adam moments are ~120 GB over 4 x 15.75 GiB.
  p = aot("--topology", "v5e-4", "--config.mesh.shape=(1,4,1)", "--config.model.llm.vocab_size=40000000",
          "--config.model.image_token_id=40000000")
  assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
  assert "DOES NOT FIT" in p.stdout


def test_executable_with_train_state_pytree_roundtrips(tmp_path):
  """Saved executables keep the trainer's TrainState (a registered dataclass) in their trees."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from acformer_jax.trainer.state import TrainState
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = aot_lib.build_mesh(jax.devices(), (1, -1, 1))
  put = lambda x, spec=P(): jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
  state = TrainState(step=put(jnp.zeros((), jnp.int32)), params={"w": put(jnp.arange(8.0), P("fsdp"))},
                     opt_state=(put(jnp.ones(8)),))
  fn = jax.jit(lambda s, x: (s.replace(step=s.step + 1, params={"w": s.params["w"] * x}), s.params["w"].sum()))
  # A CPU executable served from conftest's persistent cache serialises without its runtime
  # symbols ("Function wrapped_add not found"); TPU executables never come from that cache.
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    compiled = fn.lower(state, put(jnp.float32(2.0))).compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
  path = str(tmp_path / "step.exe")
  aot_lib.save_executable(compiled, path, {"topology": "cpu"})
  side = json.loads(open(path + ".json").read())
  assert "in_tree_pickle" in side and "out_tree_pickle" in side
  new, total = aot_lib.load_executable(path)(state, put(jnp.float32(2.0)))
  assert isinstance(new, TrainState) and int(new.step) == 1 and float(total) == 28.0
  np.testing.assert_array_equal(np.asarray(new.params["w"]), np.arange(8.0) * 2)


def test_setup_tpu_aot_script_help_and_dry_run():
  script = str(ROOT / "launch" / "setup_tpu_aot.sh")
  h = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=60)
  assert h.returncode == 0 and ".venv-tpu" in h.stdout and "--dry-run" in h.stdout
  d = subprocess.run(["bash", script, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert d.returncode == 0, d.stderr
  install = next(l for l in d.stdout.splitlines() if "pip install" in l)
  # The pins are the project's: jax's [tpu] extra at requirements.txt's jax version.
  reqs = dict(l.split("==") for l in (ROOT / "requirements.txt").read_text().splitlines() if "==" in l)
  assert f"jax[tpu]=={reqs['jax']}" in install and f"flax=={reqs['flax']}" in install
  assert f"orbax-checkpoint=={reqs['orbax-checkpoint']}" in install
  assert f"sentencepiece=={reqs['sentencepiece']}" in install  # the tiny configs' tokenizer
  bad = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "--bogus" in bad.stderr

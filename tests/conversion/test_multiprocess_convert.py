"""Conversion and export under ``jax.distributed``: 2 processes x 4 CPU devices, gloo, one
machine (docs/environment.md 3; docs/jax_practices.md items 7, 14; section 9.1): each process reads
only the blocks its devices hold, the self-check runs across processes, and the exported
tensors equal the source bit for bit. This file doubles as the worker script
(``python test_multiprocess_convert.py worker ID PORT SRC OUT``); the CLIs run the same
functions (benchmarks/convert_7b.py drives them with 2 processes)."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tests import cpu_compile

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.multiprocess


def _worker(process_id: int, port: int, src: str, out: str) -> None:
  from acformer_jax import distributed
  distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                         process_id=process_id, local_device_count=4, timeout_s=120)
  from acformer_jax.conversion import exporting, pipeline
  report = pipeline.convert("hf-llava", src, f"{out}/ckpt", tolerance=2e-4)
  exporting.export(f"{out}/ckpt", "hf-llava", f"{out}/back", max_shard_size="30KB")
  print("REPORT " + json.dumps(dict(report, process=process_id)), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_convert_and_export(tmp_path):
  import torch
  import tiny_checkpoints as T
  src = tmp_path / "src"
  T.hf_llava(src, shard="20KB")
  env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", JAX_PLATFORMS="cpu",
             PYTHONUNBUFFERED="1")
  # The workers set their own device count: only the cheap-compile flags.
  env["XLA_FLAGS"] = cpu_compile.with_flags()
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, __file__, "worker", str(i), str(port), str(src),
                             str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (so, se) in zip(procs, outs):
    assert p.returncode == 0, f"worker failed:\n{so[-2000:]}\n{se[-4000:]}"
  reports = [json.loads(next(l for l in so.splitlines() if l.startswith("REPORT "))[7:])
             for so, _ in outs]
  assert all(r["self_check"] == "passed" and r["max_abs_diff"] <= 2e-4 for r in reports)
  total = sum(f.stat().st_size for f in src.glob("*.safetensors"))
  for r in reports:  # its half of every sharded tensor (norms and biases are replicated)
    assert r["bytes_read_this_process"] < 0.6 * total, (r, total)
  assert not list(tmp_path.glob(".ckpt*")) and not list(tmp_path.glob(".back*"))
  cfg = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
  assert cfg["llm"]["vocab_size"] == 96 and cfg["image_token_id"] == 94
  got, want = T.files_state(tmp_path / "back"), T.files_state(src)
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert torch.equal(got[k], v), k


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
  _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])

"""Test-session set-up: 8 simulated CPU devices, float32, a persistent compile cache.

Must run before JAX initialises its backend, so it sets flags at import time.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from tests import cpu_compile  # noqa: E402  (no JAX import)

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# Tests are dominated by XLA:CPU compile time, not run time: cheap code generation (see
# tests/cpu_compile.py; results stay within float32 tolerances).
os.environ["XLA_FLAGS"] = cpu_compile.with_flags(_flags.strip())
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax_tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_default_matmul_precision", "highest")

try:
  import torch  # noqa: E402
  torch.set_num_threads(1)
except ImportError:  # pragma: no cover
  pass

ASSETS = ROOT / ".assets"


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
  """``acformer_demo/qa_tiny`` built once (256 train / 32 test, 56 px)."""
  from acformer_jax.data.builders import AcformerDemo
  d = tmp_path_factory.mktemp("tfds")
  AcformerDemo(config="qa_tiny", data_dir=str(d)).download_and_prepare()
  return d


# The longest tests go first, so that the two pytest-xdist workers (launch/test.sh,
# ``--dist load``) share them instead of one worker meeting them at the end of the queue.
_LONG_FIRST = ("test_multiprocess_train.py", "test_resume.py", "test_integrity.py",
               "test_multiprocess_convert.py", "test_evaluation.py", "test_step.py",
               "test_every_connector.py", "test_generate_cli.py", "test_loss.py",
               "test_finetune.py", "test_epochs.py", "test_families.py", "test_distributed.py",
               "test_toy_family.py", "test_builder.py", "test_bench.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

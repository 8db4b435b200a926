"""Trainer-test set-up. XLA:CPU runs the collectives of all simulated devices on one shared
thread pool sized by the core count; with 8 devices on 2 cores, sub-group collectives can
block every pool thread and deadlock. ``NPROC`` (read by XLA's CPU client) enlarges the pool;
it must be set before the JAX backend starts (see docs/training.md, "CPU runs")."""
import os

os.environ.setdefault("NPROC", "16")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
  """``acformer_demo/qa_tiny`` (256 train rows, 56 px) and the demo tokenizer, built here."""
  from acformer_jax.data.builders import AcformerDemo  # pylint: disable=import-outside-toplevel
  from acformer_jax.demo import tokenizer as demo_tokenizer  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("demo")
  AcformerDemo(config="qa_tiny", data_dir=str(root / "tfds")).download_and_prepare()
  return root / "tfds", demo_tokenizer.build(root / "tokenizer")

"""Train an AcFormer / LLaVA-1.5 model: ``python -m acformer_jax.train``.

  python -m acformer_jax.train --config configs/tiny_acformer_stage1.py --workdir /tmp/run1 \\
      --config.train.steps=10 --local_device_count=8

``--config`` is an ml_collections file with ``get_config()`` (``path.py:arg`` passes an
argument, e.g. ``configs/vicuna7b_stage1.py:acformer144``); any field can be overridden as
``--config.<section>.<field>=value`` (``=None`` sets None). Re-running the same command resumes from the newest
readable checkpoint in ``--workdir``. Exit status: 0 completed or preempted (a checkpoint
was saved), 3 halted on a non-finite loss, 2 invalid config. See docs/training.md.
Spec: ``docs/method.md`` 2.1-2.2, ``docs/jax_practices.md`` items 1-6, 9-10, 12-15.
"""
from __future__ import annotations

import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from acformer_jax import cli, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard, export.")
_CACHE = flags.DEFINE_string(
    "compile_cache", os.environ.get("ACFORMER_COMPILE_CACHE",
                                    str(pathlib.Path.home() / ".cache" / "acformer_jax" / "xla")),
    "Persistent XLA compilation cache directory ('' disables it).")
distributed.define_flags()
cli.show_common_flags()

EXIT_NAN = 3
EXIT_CONFIG = 2


def _setup_jax(cache_dir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_threefry_partitionable", True)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  # XLA:CPU runs every simulated device's collectives on one pool sized by NPROC (default:
  # the core count); too few threads for 8 devices can deadlock. No effect on TPU/GPU.
  os.environ.setdefault("NPROC", str(max(16, os.cpu_count() or 1)))
  distributed.initialize_from_flags()
  _setup_jax(_CACHE.value)
  from acformer_jax.trainer import loop  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer.validate import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    summary = loop.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CONFIG
  distributed.log0("finished: %s at step %d (last checkpoint %s, export %s)", summary["status"],
                   summary["step"], summary["last_checkpoint"], summary["export_dir"])
  return EXIT_NAN if summary["status"] == "nan" else 0


def run() -> None:
  cli.run(lambda argv: sys.exit(main(argv)), config_flag="config", quiet_tfds=True)


if __name__ == "__main__":
  run()

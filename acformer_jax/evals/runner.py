"""Evaluation runner: question file -> LLaVA answer file, resumable and sharded over hosts
(`docs/benchmarks.md` 1 and 6).

The generation engine is passed in as `generate_fn(batch, *, max_new_tokens) -> list[str]`,
where `batch` is a list of `(image, prompt)` pairs: `image` is a PIL image (None for
text-only ScienceQA problems) opened as LLaVA's loader opens it, `prompt` the full vicuna_v1
prompt with its `<image>` marker. The engine decodes greedily, stops at EOS and returns the
decoded texts (special tokens skipped); the runner strips them as LLaVA does.

Each host answers a contiguous slice of the questions and appends to its own work file
`<output>.part-<i>-of-<n>` (flushed per batch). Questions already answered in the output or
in any work file are skipped, so a rerun resumes. When all hosts are done, host 0 merges
everything in question order into `output` (atomically) and removes the work files; the
final file therefore only exists once it is complete. Hosts must share the output folder.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import pathlib
from typing import Callable, Hashable, Sequence

from PIL import Image
from tqdm import tqdm

from acformer_jax.evals import io as eio
from acformer_jax.evals import prompts

GenerateFn = Callable[..., list]


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
  """[lo, hi) of host `index` of `count` (LLaVA's ceil-sized contiguous chunks)."""
  if not 0 <= index < count:
    raise ValueError(f"process index {index} outside [0, {count})")
  size = math.ceil(n / count) if n else 0
  return min(n, index * size), min(n, (index + 1) * size)


def part_path(output: pathlib.Path, index: int, count: int) -> pathlib.Path:
  return output.with_name(f"{output.name}.part-{index:05d}-of-{count:05d}")


def _part_files(output: pathlib.Path) -> list[pathlib.Path]:
  return sorted(output.parent.glob(f"{output.name}.part-*-of-*"))


def read_partial(path: pathlib.Path, repair: bool = False) -> list[dict]:
  """Answers in a work file; a torn last line (crash mid-write) is ignored, and cut off
  when `repair` (only ever for this host's own file)."""
  raw = path.read_bytes()
  lines = raw.split(b"\n")
  records, good = [], 0
  for i, line in enumerate(lines):
    if not line.strip():
      good += len(line) + 1
      continue
    try:
      records.append(json.loads(line))
      good += len(line) + 1
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # last line, no newline: torn write
        if repair:
          with open(path, "r+b") as f:
            f.truncate(min(good, len(raw)))
        break
      raise eio.EvalDataError(f"{path}:{i + 1}: invalid JSON in a work file") from None
  return records


def load_image(req: prompts.Request, images_dir: pathlib.Path | None):
  """The request's image as LLaVA's loader opens it (None for text-only)."""
  if req.image is None:
    return None
  try:
    if req.image_is_base64:
      img = Image.open(io.BytesIO(base64.b64decode(req.image, validate=False)))
    else:
      img = Image.open(pathlib.Path(images_dir) / req.image)
    img.load()
  except (OSError, binascii.Error, ValueError, Image.DecompressionBombError) as e:
    src = "its base64 image" if req.image_is_base64 else pathlib.Path(images_dir) / req.image
    raise eio.EvalDataError(f"question {req.question_id!r}: cannot read {src} ({e})") from None
  return img.convert("RGB") if req.convert_rgb else img


def check_images(reqs: Sequence[prompts.Request], images_dir) -> None:
  """Raises before any generation if an image is missing."""
  missing = []
  for r in reqs:
    if r.image is None:
      continue
    if r.image_is_base64:
      if eio.is_missing(r.image):
        missing.append(f"question {r.question_id!r}: empty base64 image")
      continue
    if images_dir is None:
      raise eio.EvalDataError(f"question {r.question_id!r} needs image {r.image!r}: "
                              "pass the image folder (--images)")
    p = pathlib.Path(images_dir) / r.image
    if not p.is_file():
      missing.append(f"question {r.question_id!r}: {p}")
  if missing:
    raise eio.EvalDataError(f"{len(missing)} missing image(s), first: " +
                            "; ".join(missing[:5]))


def _known(benchmark: str, recs: list[dict], keys: set, src) -> dict[Hashable, dict]:
  out = {}
  for rec in recs:
    if not isinstance(rec, dict) or "question_id" not in rec or "text" not in rec:
      raise eio.EvalDataError(f"{src}: answer without question_id/text: {str(rec)[:100]}")
    k = prompts.answer_key(benchmark, rec)
    if k not in keys:
      raise eio.EvalDataError(f"{src}: holds an answer for question {k!r}, which is not in the "
                              "question file (a different benchmark or question file?)")
    out.setdefault(k, rec)
  return out


def answer_batches(reqs: Sequence[prompts.Request], *, generate_fn: GenerateFn,
                   images_dir=None, model_id: str = "acformer", batch_size: int = 1):
  """Yields the LLaVA answer records of `reqs`, one list per `generate_fn` call."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  for start in range(0, len(reqs), batch_size):
    batch = reqs[start:start + batch_size]
    inputs = [(load_image(r, images_dir), r.prompt) for r in batch]
    texts = generate_fn(inputs, max_new_tokens=batch[0].max_new_tokens)
    if len(texts) != len(batch) or not all(isinstance(t, str) for t in texts):
      raise TypeError(f"generate_fn returned {len(texts)} items for a batch of "
                      f"{len(batch)}; expected one string per (image, prompt) pair")
    yield [eio.answer_record(r.question_id, r.answer_prompt, text.strip(), model_id, r.extra)
           for r, text in zip(batch, texts)]


def answer_all(reqs: Sequence[prompts.Request], *, generate_fn: GenerateFn, images_dir=None,
               model_id: str = "acformer", batch_size: int = 1, progress: bool = False,
               desc: str = "") -> list[dict]:
  """All answers of `reqs` (built by `prompts.build_request`, images checked by
  `check_images`) in order, in memory (no files, no resuming): for callers that run every
  question on every process, e.g. the evaluation inside a training job."""
  out = []
  with tqdm(total=len(reqs), disable=not progress, desc=desc, unit="q") as bar:
    for records in answer_batches(reqs, generate_fn=generate_fn, images_dir=images_dir,
                                  model_id=model_id, batch_size=batch_size):
      out += records
      bar.update(len(records))
  return out


def run(benchmark: str, questions: Sequence[dict], *, generate_fn: GenerateFn,
        output: str | os.PathLike, images_dir: str | os.PathLike | None = None,
        model_id: str = "acformer", batch_size: int = 1, process_index: int = 0,
        process_count: int = 1, barrier: Callable[[str], None] = lambda name: None,
        progress: bool = True, lang: str = "en") -> pathlib.Path:
  """Answers `questions` (validated records, file order) into `output`; see module doc."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  reqs = [prompts.build_request(benchmark, q, lang=lang) for q in questions]
  keys = [r.key for r in reqs]
  key_set = set(keys)
  done: dict[Hashable, dict] = {}
  if output.is_file():
    done.update(_known(benchmark, eio.read_answers(output), key_set, output))
  own = part_path(output, process_index, process_count)
  for part in _part_files(output):
    done.update(_known(benchmark, read_partial(part, repair=part == own), key_set, part))
  lo, hi = shard_bounds(len(reqs), process_index, process_count)
  todo = [r for r in reqs[lo:hi] if r.key not in done]
  check_images(todo, images_dir)
  if todo:
    bar = tqdm(total=hi - lo, initial=hi - lo - len(todo), disable=not progress,
               desc=f"{benchmark} [host {process_index}/{process_count}]", unit="q")
    with open(own, "a", encoding="utf-8") as f, bar:
      for records in answer_batches(todo, generate_fn=generate_fn, images_dir=images_dir,
                                    model_id=model_id, batch_size=batch_size):
        f.writelines(json.dumps(rec) + "\n" for rec in records)
        f.flush()
        os.fsync(f.fileno())
        bar.update(len(records))
  barrier("acformer_eval_answered")
  if process_index == 0:
    merged = dict(done)
    for part in _part_files(output):
      merged.update({k: v for k, v in _known(benchmark, read_partial(part), key_set,
                                             part).items() if k not in merged})
    missing = [k for k in keys if k not in merged]
    if missing:
      raise eio.EvalDataError(f"{output}: {len(missing)} of {len(keys)} questions are still "
                              f"unanswered (first {missing[0]!r}); not writing an incomplete "
                              "answer file (did every host finish?)")
    eio.write_jsonl(output, [merged[k] for k in keys])
    for part in _part_files(output):
      part.unlink()
  barrier("acformer_eval_merged")
  return output

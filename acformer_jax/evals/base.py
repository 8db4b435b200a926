"""Shared scorer types and file lookup (`docs/benchmarks.md` 6).

Every scorer has the signature
`score(answers, data, *, questions=None, judge=(), out=None) -> ScoreResult`:
`answers` is a LLaVA answer file, `data` a directory laid out like
`eval_fixtures/<benchmark>/`, `questions` overrides the question file found in `data`,
`judge` lists judge output files (MM-Vet, LLaVA-Bench) and `out` is where an upload or
judge-input file is written.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

from acformer_jax.evals import io as eio
from acformer_jax.evals.io import EvalDataError


@dataclasses.dataclass
class ScoreResult:
  """Metrics of one scoring run.

  Attributes:
    metrics: flat JSON-serialisable metric dict (unrounded floats, counts).
    summary: human-readable lines; headline numbers at the published precision.
    files: files written by the scorer (role -> path).
  """
  metrics: dict[str, Any]
  summary: list[str]
  files: dict[str, str] = dataclasses.field(default_factory=dict)


def find_file(data: str | pathlib.Path, candidates: Sequence[str], what: str) -> pathlib.Path:
  """The first of `data/<candidate>` that exists (plain or compressed, see `io.locate`),
  else an error listing them."""
  data = pathlib.Path(data)
  if not data.is_dir():
    raise EvalDataError(f"--data {data}: not a directory")
  for c in candidates:
    p = eio.locate(data / c)
    if p is not None:
      return p
  tried = ", ".join(str(data / c) for c in candidates)
  raise EvalDataError(f"{what} not found; looked for: {tried}")


def question_file(data: str | pathlib.Path, questions: str | None,
                  default: str, what: str = "question file") -> pathlib.Path:
  """`questions` if given (must exist), else `data/default`."""
  if questions:
    p = eio.locate(questions)
    if p is None:
      raise EvalDataError(f"--questions {questions}: file not found")
    return p
  return find_file(data, [default], what)


def out_path(out: str | None, answers: str | pathlib.Path, suffix: str) -> pathlib.Path:
  """`out` if given, else `<answers stem><suffix>` in the current directory (never next to
  the answer file, which may sit in a shared data folder)."""
  if out:
    return pathlib.Path(out)
  return pathlib.Path.cwd() / (eio.logical(answers).stem + suffix)


def pct(num: float, den: float) -> float:
  """100 * num / den, 0.0 when den is 0."""
  return 100.0 * num / den if den else 0.0

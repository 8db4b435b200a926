"""Reading LLaVA question/answer files and writing answer files (`docs/benchmarks.md` 1, 6).

Every reader names the file, the line (or row) and the field on bad input. Readers take
plain files or their xz/gzip-compressed form (`x.jsonl.xz`, `x.jsonl.gz`), either named
directly or found next to the plain name, and decompress on the fly. Writers are
atomic: they write `<path>.tmp-<pid>` and rename it over `path` only once complete, so a
crash never leaves a partial file under the final name.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import pathlib
import sys
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

# LLaVA answer-file fields, in the order LLaVA writes them (`docs/benchmarks.md` 1, "Answer file
# format"); `round_id`, `options`, `option_char` only appear for MMBench.
ANSWER_FIELDS = ("question_id", "round_id", "prompt", "text", "options", "option_char",
                 "answer_id", "model_id", "metadata")
_REQUIRED_ANSWER_FIELDS = ("question_id", "text")

# pandas' default missing-value strings: LLaVA reads the MMBench TSV with
# `pd.read_table`, so a cell holding one of these is "no value" (`docs/benchmarks.md` 3, MMBench).
PANDAS_NA = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


class EvalDataError(ValueError):
  """Bad benchmark input: the message names the file, item and what was expected."""


def _fail(msg: str) -> EvalDataError:
  return EvalDataError(msg)


COMPRESSED_SUFFIXES = (".xz", ".gz")


def logical(path: str | os.PathLike) -> pathlib.Path:
  """`path` without a compression suffix (`a/x.jsonl.xz` -> `a/x.jsonl`)."""
  path = pathlib.Path(path)
  return path.with_suffix("") if path.suffix in COMPRESSED_SUFFIXES else path


def locate(path: str | os.PathLike) -> pathlib.Path | None:
  """`path` if it is a file, else its `.xz` or `.gz` sibling if that is one, else None."""
  path = pathlib.Path(path)
  if path.is_file():
    return path
  if path.suffix not in COMPRESSED_SUFFIXES:
    for suffix in COMPRESSED_SUFFIXES:
      packed = path.with_name(path.name + suffix)
      if packed.is_file():
        return packed
  return None


def find_files(directory: str | os.PathLike, pattern: str) -> list[pathlib.Path]:
  """Files in `directory` matching `pattern`, plain or compressed; one per logical name
  (the plain file wins), sorted by logical name."""
  found: dict[str, pathlib.Path] = {}
  for suffix in ("",) + COMPRESSED_SUFFIXES:
    for p in sorted(pathlib.Path(directory).glob(pattern + suffix)):
      if p.is_file():
        found.setdefault(logical(p).name, p)
  return [found[k] for k in sorted(found)]


def read_bytes(path: str | os.PathLike) -> bytes:
  """The bytes of `path` (or of its compressed sibling, see `locate`), decompressed."""
  real = locate(path)
  if real is None:
    raise _fail(f"{path}: file not found")
  opener = {".xz": lzma.open, ".gz": gzip.open}.get(real.suffix)
  try:
    if opener is None:
      return real.read_bytes()
    with opener(real, "rb") as f:
      return f.read()
  except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
    raise _fail(f"{real}: corrupt {real.suffix[1:]} file ({e})") from None


def read_text(path: str | os.PathLike) -> str:
  """The whole text of a plain or compressed file, decoded as UTF-8; a bad byte is an error
  naming the file, line and column."""
  raw = read_bytes(path)
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    raise _fail(f"{locate(path)}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                f"{col}); save the file as UTF-8") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a JSON-lines file of objects; blank lines are skipped."""
  path = locate(path) or pathlib.Path(path)
  records = []
  for lineno, line in enumerate(read_text(path).split("\n"), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise _fail(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
      raise _fail(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    records.append(obj)
  return records


def read_json(path: str | os.PathLike) -> Any:
  """Reads one JSON document."""
  path = locate(path) or pathlib.Path(path)
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise _fail(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None


def check_fields(record: dict, allowed: Iterable[str], required: Iterable[str],
                 where: str) -> None:
  """Raises if `record` has a field outside `allowed` or lacks one in `required`."""
  allowed = tuple(allowed)
  unknown = [k for k in record if k not in allowed]
  if unknown:
    raise _fail(f"{where}: unknown field {unknown[0]!r} "
                f"(expected only: {', '.join(sorted(allowed))})")
  missing = [k for k in required if k not in record]
  if missing:
    raise _fail(f"{where}: missing required field {missing[0]!r}")


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
  """Reads a tab-separated table with a header row (MMBench); cells stay strings."""
  path = locate(path) or pathlib.Path(path)
  csv.field_size_limit(sys.maxsize)  # base64 images are large cells
  with io.StringIO(read_text(path), newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    try:
      header = next(reader)
    except StopIteration:
      raise _fail(f"{path}: empty file, expected a header row") from None
    rows = []
    for rowno, cells in enumerate(reader, 2):
      if not cells:
        continue
      if len(cells) != len(header):
        raise _fail(f"{path}: row {rowno} has {len(cells)} cells, header has {len(header)}")
      rows.append(dict(zip(header, cells)))
  return rows


def is_missing(value: Any) -> bool:
  """LLaVA's `is_none` on a pandas cell: None, NaN, or a NA/'none' string."""
  if value is None:
    return True
  if isinstance(value, float):
    return value != value
  if isinstance(value, str):
    return value in PANDAS_NA or value.lower() in ("nan", "none")
  return False


def read_answers(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a LLaVA answer file (JSON lines) and checks its fields."""
  records = read_jsonl(path)
  for i, rec in enumerate(records, 1):
    check_fields(rec, ANSWER_FIELDS, _REQUIRED_ANSWER_FIELDS, f"{path}: answer {i}")
    if not isinstance(rec["text"], str):
      raise _fail(f"{path}: answer {i} (question_id {rec['question_id']!r}): "
                  f"'text' must be a string")
  return records


def index_answers(answers: Sequence[dict], expected: Sequence[Hashable],
                  key: Callable[[dict], Hashable], path: str | os.PathLike,
                  what: str = "question") -> dict[Hashable, dict]:
  """Maps answers by `key`; raises on duplicates, missing or unexpected items.

  Args:
    answers: answer records (file order).
    expected: the keys of the questions, in question order.
    key: answer record -> key (e.g. question_id; MME uses (question_id, prompt)).
    path: the answer file, for messages.
    what: noun for messages.
  """
  by_key: dict[Hashable, dict] = {}
  for i, rec in enumerate(answers, 1):
    k = key(rec)
    if k in by_key:
      raise _fail(f"{path}: duplicate answer for {what} {_show(k)} (answer {i})")
    by_key[k] = rec
  expected_set = set(expected)
  if len(expected_set) != len(expected):
    raise _fail(f"{path}: the question list has duplicate keys; cannot match answers")
  extra = [k for k in by_key if k not in expected_set]
  if extra:
    raise _fail(f"{path}: {len(extra)} answer(s) for unknown {what}s, first: {_show(extra[0])}")
  missing = [k for k in expected if k not in by_key]
  if missing:
    raise _fail(f"{path}: missing answers for {len(missing)} of {len(expected)} {what}s, "
                f"first: {_show(missing[0])}")
  return by_key


def _show(k: Hashable) -> str:
  if isinstance(k, tuple):
    return "(" + ", ".join(repr(x)[:80] for x in k) + ")"
  return repr(k)


def answer_id(*parts: Any) -> str:
  """A deterministic 22-character id in LLaVA's shortuuid style (base57 of sha256)."""
  alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
  n = int.from_bytes(hashlib.sha256(json.dumps(parts, default=str).encode()).digest(), "big")
  out = []
  for _ in range(22):
    n, r = divmod(n, len(alphabet))
    out.append(alphabet[r])
  return "".join(out)


def answer_record(question_id: Any, prompt: str, text: str, model_id: str,
                  extra: dict | None = None) -> dict[str, Any]:
  """One answer line with LLaVA's fields in LLaVA's order."""
  fields = {"question_id": question_id, "prompt": prompt, "text": text}
  fields.update(extra or {})
  fields["answer_id"] = answer_id(model_id, question_id, prompt, text)
  fields["model_id"] = model_id
  fields["metadata"] = {}
  return {k: fields[k] for k in ANSWER_FIELDS if k in fields}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
  """Opens a temp file next to `path`; renames it to `path` on success only."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
  kwargs = {} if "b" in mode else {"encoding": "utf-8"}
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
  """Writes JSON lines (LLaVA's `json.dumps` defaults) atomically."""
  with atomic_open(path) as f:
    for rec in records:
      f.write(json.dumps(rec) + "\n")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
  """Writes one JSON document atomically (LLaVA's `json.dump` defaults)."""
  with atomic_open(path) as f:
    json.dump(obj, f, indent=indent)

"""LLaVA-1.5 evaluation prompts, per benchmark (`docs/benchmarks.md` 1 and 3).

`build_request(benchmark, record)` turns one question-file record into a `Request`: the user
message the model sees (with the `<image>` line), the full `vicuna_v1` prompt, the `prompt`
field LLaVA writes into the answer file, the image reference and `max_new_tokens`.
Question files are used verbatim: their `text` already carries the per-benchmark suffix
(short answer, OCR tokens, VizWiz hint); only ScienceQA and MMBench prompts are assembled
here, exactly as LLaVA's loaders do.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Hashable

from acformer_jax.data import templates
from acformer_jax.evals import io as eio

IMAGE_TOKEN = templates.IMAGE_TOKEN
SHORT_ANSWER = templates.SHORT_ANSWER_SUFFIX
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_CN = "请直接回答选项字母。"
MMBENCH_OPTIONS = ("A", "B", "C", "D")

# max_new_tokens of LLaVA's loader per benchmark (docs/benchmarks.md 1, "Decoding").
MAX_NEW_TOKENS = {
    "pope": 128, "mme": 128, "textvqa": 128, "gqa": 128, "vqav2": 128, "vizwiz": 128,
    "demo": 128, "mmvet": 1024, "llava_bench": 1024, "scienceqa": 1024, "mmbench": 1024,
}
# How images are opened: the jsonl loaders convert to RGB; the ScienceQA and MMBench
# loaders keep the file's own mode (docs/benchmarks.md 1, "Image preprocessing").
CONVERT_RGB = {name: name not in ("scienceqa", "mmbench") for name in MAX_NEW_TOKENS}

# Allowed / required fields of each question-file format.
JSONL_FIELDS = ("question_id", "image", "text", "category")
JSONL_REQUIRED = ("question_id", "image", "text")
SQA_FIELDS = ("id", "image", "conversations")
MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category",
                   "l2-category", "L2-category", "source", "split", "image", "comment")
MMBENCH_REQUIRED = ("index", "question", "A", "B", "image")


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation request.

  Attributes:
    key: unique key of the question within its file (resume / merge key).
    question_id: the question's id as written to the answer file.
    image: image file path relative to the image folder, base64 image data (MMBench,
      `image_is_base64`), or None for text-only ScienceQA problems.
    user_message: the first user turn, `<image>\\n` + question (+ suffix).
    prompt: the full vicuna_v1 prompt string (ends with "ASSISTANT:").
    answer_prompt: the `prompt` field of LLaVA's answer file.
    max_new_tokens: LLaVA's decoding cap for the benchmark.
    extra: extra answer-file fields (MMBench: round_id, options, option_char).
  """
  key: Hashable
  question_id: Any
  image: str | None
  user_message: str
  prompt: str
  answer_prompt: str
  max_new_tokens: int
  extra: dict = dataclasses.field(default_factory=dict)
  image_is_base64: bool = False
  convert_rgb: bool = True


def vicuna_v1(question: str, has_image: bool) -> str:
  """The vicuna_v1 generation prompt (docs/benchmarks.md 1), via the training templates."""
  return templates.generation_prompt(question, has_image=has_image, template="vicuna_v1")


def question_key(benchmark: str, record: dict) -> Hashable:
  """A key unique within a question file (MME and TextVQA repeat question_ids)."""
  if benchmark == "scienceqa":
    return record["id"]
  if benchmark == "mmbench":
    return int(record["index"])
  if benchmark in ("mme", "textvqa"):
    return (record["question_id"], record["text"])
  return record["question_id"]


def answer_key(benchmark: str, answer: dict) -> Hashable:
  """The `question_key` of the question an answer record belongs to."""
  if benchmark in ("mme", "textvqa"):
    return (answer["question_id"], answer.get("prompt"))
  if benchmark == "mmbench":
    return int(answer["question_id"])
  return answer["question_id"]


def validate_question(benchmark: str, record: dict, where: str) -> None:
  """Raises on unknown or missing fields of a question record."""
  if benchmark == "scienceqa":
    eio.check_fields(record, SQA_FIELDS, ("id", "conversations"), where)
    conv = record["conversations"]
    if not (isinstance(conv, list) and conv and isinstance(conv[0], dict)
            and conv[0].get("from") == "human" and isinstance(conv[0].get("value"), str)):
      raise eio.EvalDataError(f"{where}: 'conversations' must start with a human turn")
  elif benchmark == "mmbench":
    eio.check_fields(record, MMBENCH_COLUMNS, MMBENCH_REQUIRED, where)
    if not str(record["index"]).strip().isdigit():
      raise eio.EvalDataError(f"{where}: 'index' must be a non-negative integer, "
                              f"got {record['index']!r}")
  else:
    eio.check_fields(record, JSONL_FIELDS, JSONL_REQUIRED, where)
    if not isinstance(record["text"], str):
      raise eio.EvalDataError(f"{where}: 'text' must be a string")


def _sqa(record: dict) -> tuple[str | None, str, str]:
  """(image, question body, answer-file prompt) as in LLaVA's model_vqa_science."""
  text = record["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
  image = record.get("image")
  shown = f"{IMAGE_TOKEN}\n{text}" if image is not None else text
  return image, f"{text}\n{MULTIPLE_CHOICE}", f"{shown}\n{MULTIPLE_CHOICE}"


def mmbench_options(record: dict) -> list[str]:
  """The option texts A, B, ... up to the first missing one (LLaVA's get_options)."""
  options = []
  for letter in MMBENCH_OPTIONS:
    value = record.get(letter)
    if eio.is_missing(value):
      break
    options.append(str(value))
  return options


def _mmbench(record: dict, lang: str = "en") -> tuple[str, str, dict]:
  options = mmbench_options(record)
  question = str(record["question"])
  hint = record.get("hint")
  if not eio.is_missing(hint):
    question = f"{hint}\n{question}"
  for letter, option in zip(MMBENCH_OPTIONS, options):
    question += f"\n{letter}. {option}"
  suffix = MULTIPLE_CHOICE_CN if lang == "cn" else MULTIPLE_CHOICE
  extra = {"round_id": 0, "options": options,
           "option_char": list(MMBENCH_OPTIONS[:len(options)])}
  return f"{question}\n{suffix}", question, extra


def build_request(benchmark: str, record: dict, *, lang: str = "en") -> Request:
  """The generation request LLaVA-1.5 makes for one question record."""
  if benchmark not in MAX_NEW_TOKENS:
    raise eio.EvalDataError(f"unknown benchmark {benchmark!r} "
                            f"(expected one of {', '.join(sorted(MAX_NEW_TOKENS))})")
  extra: dict = {}
  is_b64 = False
  if benchmark == "scienceqa":
    image, body, shown = _sqa(record)
    qid = record["id"]
  elif benchmark == "mmbench":
    body, shown, extra = _mmbench(record, lang)
    image, qid, is_b64 = record["image"], int(record["index"]), True
  else:
    image, qid, body = record["image"], record["question_id"], record["text"]
    shown = body
  user = f"{IMAGE_TOKEN}\n{body}" if image is not None else body
  return Request(key=question_key(benchmark, record), question_id=qid, image=image,
                 user_message=user, prompt=vicuna_v1(body, image is not None),
                 answer_prompt=shown,
                 max_new_tokens=MAX_NEW_TOKENS[benchmark], extra=extra,
                 image_is_base64=is_b64, convert_rgb=CONVERT_RGB[benchmark])

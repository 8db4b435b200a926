"""Record schema shared by the LLaVA and demo tfds builders.

Spec: ``docs/method.md`` 2.1/2.2 (LLaVA JSON: ``id``, optional ``image`` relative path,
``conversations`` of ``{"from", "value"}``) and ``docs/environment.md`` 1 (tfds without TensorFlow:
ArrayRecord files, images stored as encoded bytes, read with ``as_data_source``).

A record holds the encoded image bytes exactly as found on disk (``b""`` for text-only samples
*and* for missing files: the pipeline skips and counts those), the conversation, the LLaVA
modality length (word count) and a JSON ``meta`` string. Entries that cannot be stored at all
(no conversation list, non-string fields) are skipped at build time and counted in
``info.metadata["build_skipped"]``.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

FILE_FORMAT = "array_record"


def _code_path(cls) -> epath.Path:
  return epath.Path(sys.modules[cls.__module__].__file__)


# tfds 4.9.10's default ``code_path`` touches the ``importlib_resources`` backport (declared only
# for Python < 3.9) for builders that live in a package; builders set this instead.
CODE_PATH = tfds.core.utils.classproperty(classmethod(_code_path))


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes or b""
      "image_path": tfds.features.Text(),
      "has_image": tfds.features.Scalar(dtype=np.bool_),
      "conversations": tfds.features.Sequence({"from": tfds.features.Text(), "value": tfds.features.Text()}),
      "num_words": tfds.features.Scalar(dtype=np.int32),
      "meta": tfds.features.Text(),
  })


def num_words(conversations) -> int:
  """LLaVA's modality length: whitespace-separated words over all turns (docs/method.md 2.2)."""
  return sum(len(m["value"].split()) for m in conversations)


def check_conversations(conversations) -> Optional[str]:
  """Returns why ``conversations`` cannot be stored, or None when it can."""
  if not isinstance(conversations, list) or not conversations:
    return "'conversations' must be a non-empty list"
  for i, m in enumerate(conversations):
    if not isinstance(m, Mapping) or not isinstance(m.get("from"), str) or not isinstance(m.get("value"), str):
      return f"conversations[{i}] needs string fields 'from' and 'value'"
  return None


def make_example(*, sample_id: str, image: bytes, image_path: str, has_image: bool,
                 conversations, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  convs = [{"from": m["from"], "value": m["value"]} for m in conversations]
  return {"id": sample_id, "image": image, "image_path": image_path, "has_image": has_image,
          "conversations": convs, "num_words": num_words(convs), "meta": json.dumps(meta or {})}


def _bad_text(entry: Mapping[str, Any]) -> Optional[str]:
  """Where ``entry`` holds text that cannot be stored as UTF-8 (lone surrogates, or invalid
  bytes of the file, which :func:`fingerprint.read_json_text` turns into lone surrogates)."""
  fields = [("id", entry.get("id")), ("image", entry.get("image"))]
  fields += [(f"conversations[{i}].{k}", m.get(k)) for i, m in enumerate(entry["conversations"])
             for k in ("from", "value")]
  for name, value in fields:
    if isinstance(value, str):
      try:
        value.encode("utf-8")
      except UnicodeEncodeError as e:
        return f"{name} is not valid UTF-8 text at character {e.start}"
  return None


def _skip(skipped, records, reason: str, index: int, json_path, why: str) -> None:
  skipped[reason] = skipped.get(reason, 0) + 1
  if records is not None:
    records.setdefault(reason, []).append(index)
  print(f"[acformer_jax.data] {json_path} entry {index} skipped ({reason}): {why}")


def llava_examples(json_path: pathlib.Path, image_root: Optional[pathlib.Path],
                   skipped: Dict[str, int],
                   records: Optional[Dict[str, list]] = None) -> Iterator[Tuple[int, Dict[str, Any]]]:
  """Reads a LLaVA JSON (list of samples); yields ``(index, example)``.

  Image files are read as bytes without decoding; a missing file gives ``b""`` (the pipeline
  counts it as ``missing_image``). Entries that cannot be stored are skipped and counted in
  ``skipped`` by reason (their indices in ``records``): ``bad_record`` (schema), ``bad_text``
  (text that is not valid UTF-8), ``bad_path`` (an image path resolving outside
  ``image_root``; never read).
  """
  from acformer_jax.data import fingerprint  # pylint: disable=import-outside-toplevel
  json_path = pathlib.Path(json_path)
  if not json_path.is_file():
    raise FileNotFoundError(f"LLaVA annotation file {json_path} does not exist")
  data = fingerprint.load_json(json_path)
  if not isinstance(data, list):
    raise ValueError(f"{json_path}: expected a JSON list of samples, got {type(data).__name__}")
  needs_images = any(isinstance(e, Mapping) and e.get("image") for e in data)
  if needs_images and (image_root is None or not pathlib.Path(image_root).is_dir()):
    raise FileNotFoundError(f"image root {image_root} (for the 'image' paths in {json_path}) is not a directory")
  for index, entry in enumerate(data):
    problem = "entry is not an object" if not isinstance(entry, Mapping) else check_conversations(
        entry.get("conversations"))
    rel = entry.get("image") if isinstance(entry, Mapping) else None
    if problem is None and rel is not None and not isinstance(rel, str):
      problem = "'image' must be a string path"
    if problem is not None:
      _skip(skipped, records, "bad_record", index, json_path, problem)
      continue
    text_problem = _bad_text(entry)
    if text_problem is not None:
      _skip(skipped, records, "bad_text", index, json_path, text_problem)
      continue
    image = b""
    if rel:
      path = fingerprint.inside(pathlib.Path(image_root), rel)
      if path is None:
        _skip(skipped, records, "bad_path", index, json_path,
              f"image {rel!r} resolves outside the image root {image_root}")
        continue
      image = path.read_bytes() if path.is_file() else b""
    yield index, make_example(sample_id=str(entry.get("id", index)), image=image, image_path=rel or "",
                              has_image=bool(rel), conversations=entry["conversations"])

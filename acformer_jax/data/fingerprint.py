"""Content fingerprints of prepared datasets (issue #15 item 3: caches keyed by content).

A LLaVA build depends on the annotation JSON and the image files it reads. The *source*
fingerprint hashes the JSON's bytes and, for every image path inside ``image_root``, its
path, size and modification time (paths that resolve outside the root are neither read nor
stat'ed). It names the tfds build (``<data_dir>/<builder>/src_<fingerprint>/<version>``), so
a changed source builds into a new cache instead of silently reusing the old one.

The *data* fingerprint adds what turns records into rows on the fly: the tokenizer files,
the template, ``max_length`` and the image preprocessing settings. It is logged and kept in
the iterator state (``data_fingerprint``) so a run records exactly what it trained on.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Mapping, Optional

from acformer_jax.data.preprocess import CLIP_MEAN, CLIP_STD

VERSION = 1  # bump when the build's skip rules change (old caches then count as stale)
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json")


def read_json_text(path) -> str:
  """The file decoded as UTF-8; invalid bytes become lone surrogates (``surrogateescape``), so
  the record holding them can be skipped as ``bad_text`` instead of failing the whole file."""
  return pathlib.Path(path).read_bytes().decode("utf-8", errors="surrogateescape")


def load_json(path) -> Any:
  """Parses a JSON file; a syntax error names the file, line and column."""
  try:
    return json.loads(read_json_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None


def inside(root: pathlib.Path, rel: str) -> Optional[pathlib.Path]:
  """``root / rel`` resolved, or None when it resolves outside ``root`` (``..``, absolute
  paths, symlinks leading out)."""
  root = pathlib.Path(root).resolve()
  try:
    path = (root / rel).resolve()
  except (OSError, ValueError):
    return None
  return path if path == root or root in path.parents else None


def source_fingerprint(json_path, image_root, builder_version: str = "") -> str:
  """Hex digest over the JSON bytes and the (path, size, mtime) of every image it names."""
  json_path = pathlib.Path(json_path)
  if not json_path.is_file():
    raise FileNotFoundError(f"LLaVA annotation file {json_path} does not exist")
  h = hashlib.sha256(f"acformer-data-v{VERSION}|{builder_version}|".encode())
  raw = json_path.read_bytes()
  h.update(hashlib.sha256(raw).digest())
  data = load_json(json_path)
  if image_root is not None and isinstance(data, list):
    root = pathlib.Path(image_root)
    for entry in data:
      rel = entry.get("image") if isinstance(entry, Mapping) else None
      if not isinstance(rel, str) or not rel:
        continue
      path = inside(root, rel)
      try:
        st = path.stat() if path is not None else None
        stamp = f"{st.st_size}:{st.st_mtime_ns}" if st else "outside"
      except OSError:
        stamp = "missing"
      h.update(f"{rel}\0{stamp}\n".encode("utf-8", errors="surrogatepass"))
  return h.hexdigest()


def tokenizer_digest(tokenizer_path) -> str:
  """Digest of the tokenizer files in ``tokenizer_path`` ("" when not a folder)."""
  d = pathlib.Path(tokenizer_path) if tokenizer_path else None
  if d is None or not d.is_dir():
    return ""
  h = hashlib.sha256()
  for name in _TOKENIZER_FILES:
    if (d / name).is_file():
      h.update(name.encode() + b"\0" + hashlib.sha256((d / name).read_bytes()).digest())
  return h.hexdigest()


def data_fingerprint(source: str, *, tokenizer: str, template: str, max_length: int,
                     image_size: int, pad_to_square: bool, overlong: str,
                     image_mean=CLIP_MEAN, image_std=CLIP_STD) -> str:
  """Source fingerprint + everything applied on the fly when records become rows (the
  normalisation counts only when it is not CLIP's, so CLIP fingerprints stay as they were)."""
  parts = dict(source=source, tokenizer=tokenizer, template=template, max_length=int(max_length),
               image_size=int(image_size), pad_to_square=bool(pad_to_square), overlong=overlong)
  if tuple(image_mean) != tuple(CLIP_MEAN) or tuple(image_std) != tuple(CLIP_STD):
    parts.update(image_mean=[float(m) for m in image_mean], image_std=[float(x) for x in image_std])
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

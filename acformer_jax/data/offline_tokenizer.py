"""Builds the real LLaMA SentencePiece tokenizer offline from a pinned package.

Spec: ``docs/offline_assets.md`` section 1. The LLaMA/Vicuna vocabulary is rebuilt at set-up
time (never committed) into ``DIR/tokenizer.model`` + ``DIR/tokenizer_config.json``:

* route ``npm`` (1b, default): ``npm pack llama-tokenizer-js@1.2.2``; the package embeds the
  32000 pieces (base64, newline-joined). Scores follow LLaMA's exact rule: ids 0-258 score 0,
  id >= 259 scores ``-(id - 259)``, except pieces made only of U+2581, which score -1e9.
* route ``pypi`` (1a, fallback): the ``llama-cpp-python==0.3.36`` sdist ships
  ``ggml-vocab-llama-spm.gguf`` (tokens, scores, types), read with the vendored ``gguf-py``.

Both give the same bytes; the result must have sha256 :data:`EXPECTED_SHA256`, otherwise the
build fails loudly. Idempotent: a complete ``DIR`` is left alone.

Usage: ``python -m acformer_jax.data.offline_tokenizer --out DIR [--source auto|npm|pypi]``
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import List, Sequence, Tuple

EXPECTED_SHA256 = "0e75d3708a3abef049c6309308cb8683039a8cc80ed32ea329825f298a0b2658"
NPM_PACKAGE = "llama-tokenizer-js@1.2.2"
PYPI_SDIST = "llama-cpp-python==0.3.36"
TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "legacy": True,
}
DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[2] / ".assets" / "llama_tokenizer"

# GGUF token types -> SentencePiece piece types (docs/offline_assets.md 1a).
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_BYTE = 1, 2, 3, 6


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def is_complete(out: pathlib.Path) -> bool:
  """True when ``out`` holds the verified model and the expected config."""
  model, cfg = out / "tokenizer.model", out / "tokenizer_config.json"
  if not (model.is_file() and cfg.is_file()):
    return False
  try:
    return (_sha256(model.read_bytes()) == EXPECTED_SHA256
            and json.loads(cfg.read_text()) == TOKENIZER_CONFIG)
  except (OSError, ValueError):
    return False


def llama_scores_and_types(pieces: Sequence[str]) -> List[Tuple[float, str]]:
  """LLaMA's score/type rule for the vocabulary (docs/offline_assets.md 1b)."""
  out = []
  for i, piece in enumerate(pieces):
    if i == 0:
      out.append((0.0, "UNKNOWN"))
    elif i < 3:
      out.append((0.0, "CONTROL"))
    elif i < 259:
      out.append((0.0, "BYTE"))
    elif piece and set(piece) == {"\u2581"}:
      out.append((-1e9, "NORMAL"))
    else:
      out.append((-float(i - 259), "NORMAL"))
  return out


def serialize_model(pieces: Sequence[str], scores_types: Sequence[Tuple[float, str]]) -> bytes:
  """Writes a SentencePiece ``ModelProto`` with LLaMA's trainer/normalizer settings."""
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel
  proto = pb.ModelProto()
  kind = pb.ModelProto.SentencePiece.Type
  for piece, (score, type_name) in zip(pieces, scores_types):
    sp = proto.pieces.add()
    sp.piece = piece
    sp.score = score
    sp.type = kind.Value(type_name)
  ts = proto.trainer_spec
  ts.model_type = pb.TrainerSpec.BPE
  ts.vocab_size = len(pieces)
  ts.byte_fallback = True
  ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
  ts.split_digits = True
  ts.allow_whitespace_only_pieces = True
  ns = proto.normalizer_spec
  ns.name = "identity"
  ns.add_dummy_prefix = True
  ns.remove_extra_whitespaces = False
  ns.escape_whitespaces = True
  return proto.SerializeToString()


def pieces_from_js(js_source: str) -> List[str]:
  """Extracts the 32000 vocabulary pieces embedded in ``llama-tokenizer.js``."""
  m = re.search(r'llama_vocab_base64\s*=\s*"([A-Za-z0-9+/=]+)"', js_source)
  if not m:
    raise ValueError("llama-tokenizer.js: constant `llama_vocab_base64` not found")
  pieces = base64.b64decode(m.group(1)).decode("utf-8").split("\n")
  if len(pieces) != 32000:
    raise ValueError(f"llama-tokenizer.js: expected 32000 pieces, got {len(pieces)}")
  return pieces


def _build_from_npm(work: pathlib.Path) -> bytes:
  npm = shutil.which("npm")
  if npm is None:
    raise RuntimeError("npm is not on PATH")
  res = subprocess.run([npm, "pack", NPM_PACKAGE, "--pack-destination", str(work),
                        "--loglevel=error", "--no-fund", "--no-audit"],
                       cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if res.returncode:  # npm's notices are kept quiet; its errors are not
    raise RuntimeError(f"npm pack {NPM_PACKAGE} failed: {res.stderr.strip()[-2000:]}")
  tgz = next(work.glob("llama-tokenizer-js-*.tgz"))
  with tarfile.open(tgz) as tar:
    js = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")
  pieces = pieces_from_js(js)
  return serialize_model(pieces, llama_scores_and_types(pieces))


def _build_from_pypi(work: pathlib.Path) -> bytes:
  subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                  ":all:", PYPI_SDIST, "-d", str(work)], check=True, stdout=subprocess.DEVNULL)
  sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
  with tarfile.open(sdist) as tar:
    wanted = [m for m in tar.getmembers()
              if m.name.endswith("models/ggml-vocab-llama-spm.gguf") or "/gguf-py/gguf/" in m.name]
    tar.extractall(work, members=wanted, filter="data")
  gguf_file = next(work.rglob("ggml-vocab-llama-spm.gguf"))
  gguf_py = next(work.rglob("gguf-py"))
  sys.path.insert(0, str(gguf_py))
  import gguf  # pylint: disable=import-outside-toplevel,import-error
  reader = gguf.GGUFReader(str(gguf_file))
  fields = {k: reader.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type")}
  names = {_GGUF_NORMAL: "NORMAL", _GGUF_UNKNOWN: "UNKNOWN", _GGUF_CONTROL: "CONTROL", _GGUF_BYTE: "BYTE"}
  st = [(float(s), names[int(t)]) for s, t in zip(fields["scores"], fields["token_type"])]
  return serialize_model(list(fields["tokens"]), st)


def build(out: pathlib.Path, source: str = "auto") -> pathlib.Path:
  """Builds ``out/tokenizer.model`` + ``tokenizer_config.json`` unless already complete."""
  out = pathlib.Path(out)
  if is_complete(out):
    print(f"[offline_tokenizer] {out} is complete (sha256 verified); nothing to do")
    return out
  routes = {"auto": ("npm", "pypi"), "npm": ("npm",), "pypi": ("pypi",)}[source]
  errors = []
  data = None
  for route in routes:
    with tempfile.TemporaryDirectory() as tmp:
      try:
        data = (_build_from_npm if route == "npm" else _build_from_pypi)(pathlib.Path(tmp))
        break
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"{route}: {type(e).__name__}: {e}")
        print(f"[offline_tokenizer] route {route} failed: {e}", file=sys.stderr)
  if data is None:
    raise RuntimeError("could not build the LLaMA tokenizer: " + "; ".join(errors))
  digest = _sha256(data)
  if digest != EXPECTED_SHA256:
    raise RuntimeError(
        f"rebuilt tokenizer.model has sha256 {digest}, expected {EXPECTED_SHA256} "
        "(docs/offline_assets.md 1); refusing to install it")
  out.mkdir(parents=True, exist_ok=True)
  tmp_model = out / "tokenizer.model.tmp"
  tmp_model.write_bytes(data)
  os.replace(tmp_model, out / "tokenizer.model")
  (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
  print(f"[offline_tokenizer] wrote {out}/tokenizer.model ({len(data)} bytes, sha256 verified)")
  return out


SOURCES = ("auto", "npm", "pypi")


def main(argv) -> int:
  """absl entry point (flags defined only when run as a program: importers get none)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  if flags.FLAGS.source not in SOURCES:
    raise app.UsageError(f"--source {flags.FLAGS.source!r}: expected one of {SOURCES}")
  build(pathlib.Path(flags.FLAGS.out), flags.FLAGS.source)
  return 0


if __name__ == "__main__":
  from acformer_jax import cli
  cli.define("string", "out", str(DEFAULT_DIR), "Output directory.")
  cli.define("string", "source", "auto", f"Where the pieces come from: {', '.join(SOURCES)}.")
  cli.run(lambda argv: sys.exit(main(argv)))

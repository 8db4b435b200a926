"""Tokenizer loading and LLaVA-exact text encoding.

Spec: ``docs/method.md`` 2.3 (Vicuna's LLaMA SentencePiece tokenizer, slow, ``pad = unk``, right
padding) and ``docs/offline_assets.md`` 1 (the offline copy of the LLaMA tokenizer).

:func:`load_tokenizer` returns a transformers ``AutoTokenizer`` (users bring Vicuna's directory
or a checkpoint directory; tests use the offline asset). transformers 5 only ships the
``tokenizers``-backed LLaMA tokenizer, which differs from SentencePiece on runs of spaces
(``"  two"``) and on leading spaces of a chunk, while LLaVA trained with the slow SentencePiece
tokenizer. :func:`make_encoder` therefore encodes with SentencePiece itself whenever the tokenizer
has a ``tokenizer.model``, reproducing the slow tokenizer: the text is split on the special
tokens, each piece is encoded on its own (legacy mode adds SentencePiece's dummy prefix to every
piece; non-legacy mode only to the first), and BOS is optional.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Callable, Dict, List, Optional

DEFAULT_TOKENIZER_DIR = pathlib.Path(__file__).resolve().parents[2] / ".assets" / "llama_tokenizer"


def load_tokenizer(path: Optional[os.PathLike] = None, *, model_max_length: Optional[int] = None):
  """Loads an ``AutoTokenizer`` from a local directory (never downloads, never remote code).

  Args:
    path: directory with ``tokenizer.model`` / ``tokenizer.json`` + ``tokenizer_config.json``
      (a Vicuna or converted checkpoint directory). Defaults to the offline LLaMA asset built by
      ``python -m acformer_jax.data.offline_tokenizer``.
    model_max_length: optional override (LLaVA uses 2048).

  Returns:
    The tokenizer with LLaVA's settings: ``pad_token = unk_token`` and right padding.
  """
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path) if path is not None else DEFAULT_TOKENIZER_DIR
  if not path.is_dir():
    hint = (" (build it with `python -m acformer_jax.data.offline_tokenizer --out "
            f"{DEFAULT_TOKENIZER_DIR}` or launch/setup.sh)" if path == DEFAULT_TOKENIZER_DIR else "")
    raise FileNotFoundError(f"tokenizer directory {path} does not exist{hint}")
  if not any((path / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
    raise FileNotFoundError(
        f"{path} holds neither tokenizer.model nor tokenizer.json; expected a tokenizer directory")
  kwargs = {"local_files_only": True, "trust_remote_code": False}
  if model_max_length is not None:
    kwargs["model_max_length"] = model_max_length
  tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
  if tok.unk_token is not None:
    tok.pad_token = tok.unk_token  # docs/method.md 2.3: pad = unk (id 0) for v1 / plain
  tok.padding_side = "right"
  return tok


@dataclasses.dataclass
class Encoder:
  """Text -> ids with LLaVA's (slow tokenizer) semantics; see the module docstring.

  Attributes:
    encode: ``encode(text, add_bos) -> list[int]``.
    bos_id / eos_id / pad_id: special ids (pad falls back to unk, then 0).
    backend: ``"sentencepiece"`` or ``"hf"``.
  """
  encode: Callable[[str, bool], List[int]]
  bos_id: Optional[int]
  eos_id: Optional[int]
  pad_id: int
  backend: str


def _special_ids(tok) -> Dict[str, int]:
  out = {}
  for t in tok.all_special_tokens:
    i = tok.convert_tokens_to_ids(t)
    if isinstance(i, int) and i >= 0:
      out[t] = i
  return out


def _sentencepiece_encoder(model_file: str, specials: Dict[str, int], legacy: bool):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sp = spm.SentencePieceProcessor(model_file=model_file)
  split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
  unk = sp.id_to_piece(sp.unk_id())
  unk_len = len(sp.encode(unk))

  def encode_piece(text: str, first: bool) -> List[int]:
    if not text:
      return []
    if legacy or first:
      return sp.encode(text)
    # Non-legacy slow tokenizer: no dummy prefix after a special token.
    return sp.encode(unk + text)[unk_len:]

  def encode(text: str, add_bos: bool) -> List[int]:
    ids: List[int] = []
    first = True
    for part in (split.split(text) if specials else [text]):
      if part in specials:
        ids.append(specials[part])
        first = False
      elif part:
        ids.extend(encode_piece(part, first))
        first = False
    bos = sp.bos_id()
    return ([bos] if add_bos and bos >= 0 else []) + ids

  return encode


def make_encoder(tokenizer, *, backend: str = "auto") -> Encoder:
  """Builds the :class:`Encoder` used by the templates for a loaded tokenizer.

  Args:
    tokenizer: a transformers tokenizer (from :func:`load_tokenizer`) or an :class:`Encoder`.
    backend: ``"auto"`` (SentencePiece when ``tokenizer.vocab_file`` is a ``.model`` file),
      ``"sentencepiece"`` or ``"hf"`` (``tokenizer(text, add_special_tokens=add_bos)``).
  """
  if isinstance(tokenizer, Encoder):
    return tokenizer
  vocab_file = getattr(tokenizer, "vocab_file", None)
  has_sp = bool(vocab_file) and str(vocab_file).endswith(".model") and os.path.isfile(vocab_file)
  if backend == "sentencepiece" and not has_sp:
    raise ValueError(f"backend='sentencepiece' needs a tokenizer.model; tokenizer has {vocab_file!r}")
  if backend not in ("auto", "sentencepiece", "hf"):
    raise ValueError(f"backend must be auto|sentencepiece|hf, got {backend!r}")
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
  common = dict(bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                pad_id=pad if pad is not None else 0)
  if backend != "hf" and has_sp:
    legacy = bool(getattr(tokenizer, "legacy", True))
    fn = _sentencepiece_encoder(str(vocab_file), _special_ids(tokenizer), legacy)
    return Encoder(encode=fn, backend="sentencepiece", **common)

  def hf_encode(text: str, add_bos: bool) -> List[int]:
    return list(tokenizer(text, add_special_tokens=add_bos).input_ids)

  return Encoder(encode=hf_encode, backend="hf", **common)



def load_encoder(path: Optional[os.PathLike] = None) -> Encoder:
  """The SentencePiece :class:`Encoder` of a tokenizer directory, without importing transformers.

  Same ids as ``make_encoder(load_tokenizer(path))`` for LLaMA-style directories (special tokens
  = the model's unk/bos/eos pieces, ``legacy`` from ``tokenizer_config.json``, default True);
  falls back to :func:`load_tokenizer` when there is no ``tokenizer.model``.
  """
  path = pathlib.Path(path) if path is not None else DEFAULT_TOKENIZER_DIR
  model = path / "tokenizer.model"
  if not model.is_file():
    return make_encoder(load_tokenizer(path))
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sp = spm.SentencePieceProcessor(model_file=str(model))
  cfg_file = path / "tokenizer_config.json"
  cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
  ids = {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
  specials = {sp.id_to_piece(i): i for i in ids.values() if i >= 0}
  fn = _sentencepiece_encoder(str(model), specials, bool(cfg.get("legacy", True)))
  pick = lambda i: i if i >= 0 else None  # noqa: E731
  return Encoder(encode=fn, bos_id=pick(ids["bos"]), eos_id=pick(ids["eos"]),
                 pad_id=ids["unk"] if ids["unk"] >= 0 else 0, backend="sentencepiece")

"""File names of a params directory, its model config, and the tokenizer lookup."""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Optional

from acformer_jax import config as config_lib

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
VOCAB_FILES = ("tokenizer.model", "tokenizer.json")  # one of these makes a tokenizer
TOKENIZER_FILES = VOCAB_FILES + ("tokenizer_config.json", "special_tokens_map.json",
                                 "added_tokens.json")


def is_checkpoint(directory) -> bool:
  """Whether ``directory`` holds this layout (``model_config.json`` + ``params/``)."""
  d = pathlib.Path(directory)
  return (d / CONFIG_FILE).is_file() and (d / PARAMS_DIR).is_dir()


def read_model_config(directory) -> config_lib.ModelConfig:
  """The ``ModelConfig`` of a params directory (errors name the file and the problem)."""
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found: a params directory needs {CONFIG_FILE} next to its Orbax "
        f"'{PARAMS_DIR}/' item (see docs/inference.md)")
  try:
    raw = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None
  try:
    return config_lib.model_config_from_dict(raw)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a ModelConfig: {e}") from None


def write_model_config(directory, model_config: config_lib.ModelConfig) -> None:
  path = pathlib.Path(directory) / CONFIG_FILE
  path.write_text(json.dumps(config_lib.model_config_to_dict(model_config), indent=2) + "\n")


def is_hf_llava(directory) -> bool:
  """True for a transformers ``LlavaForConditionalGeneration`` directory."""
  path = pathlib.Path(directory) / "config.json"
  try:
    return path.is_file() and json.loads(path.read_text()).get("model_type") == "llava"
  except ValueError:
    return False


def find_tokenizer(*places) -> Optional[pathlib.Path]:
  """The first tokenizer directory among ``places`` (each a directory or a file in one):
  ``<place>/tokenizer/`` (this layout) before ``<place>`` itself (a transformers directory);
  None when none holds ``tokenizer.model`` or ``tokenizer.json``."""
  for place in places:
    if place is None:
      continue
    d = pathlib.Path(place)
    d = d if d.is_dir() else d.parent
    for cand in (d / TOKENIZER_DIR, d):
      if any((cand / f).is_file() for f in VOCAB_FILES):
        return cand
  return None


def copy_tokenizer(src, dst) -> None:
  """Copies the tokenizer files of ``src`` into ``dst`` (created); nothing if ``src`` is None."""
  if src is None:
    return
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  names = [f for f in TOKENIZER_FILES if (src / f).is_file()]
  if not any(f in names for f in VOCAB_FILES):
    raise FileNotFoundError(f"tokenizer directory {src} holds neither tokenizer.model nor "
                            "tokenizer.json")
  dst.mkdir(parents=True, exist_ok=True)
  for f in names:
    shutil.copy2(src / f, dst / f)

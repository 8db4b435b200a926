"""Loads a model for inference: config + params + tokenizer from one directory.

The directory is a params directory (layout, save and restore in
:mod:`acformer_jax.params_store`; docs/inference.md) or a transformers Llava directory,
converted on the fly (nothing written).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import jax

from acformer_jax import config as config_lib
from acformer_jax import params_store
from acformer_jax import sharding as sharding_lib
from acformer_jax.models.mllm import MultimodalLM


@dataclasses.dataclass
class LoadedModel:
  """What :func:`load_for_inference` returns."""
  config: config_lib.ModelConfig
  model: MultimodalLM
  params: Any
  tokenizer: Any  # transformers tokenizer, or None when the directory has none
  directory: pathlib.Path


def load_for_inference(directory, *, mesh=None, tokenizer_dir=None, dtype: Optional[str] = None,
                       require_tokenizer: bool = True) -> LoadedModel:
  """Builds the model and restores its params (sharded on ``mesh`` when given).

  Args:
    directory: a params directory, or a transformers Llava directory (converted on the fly).
    mesh: optional ``(data, fsdp, tensor)`` mesh to restore onto.
    tokenizer_dir: overrides the tokenizer location.
    dtype: optional compute dtype override (e.g. ``"bfloat16"``); params keep theirs.
    require_tokenizer: raise when no tokenizer is found (else ``tokenizer=None``).
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  if not (directory / params_store.CONFIG_FILE).is_file() and params_store.is_hf_llava(directory):
    return _load_hf_llava(directory, mesh, tokenizer_dir, dtype, require_tokenizer)
  mc, params = params_store.restore_all(directory, mesh=mesh, dtype=dtype)
  return LoadedModel(mc, MultimodalLM(mc), params,
                     _tokenizer(directory, tokenizer_dir, require_tokenizer), directory)


def _load_hf_llava(directory: pathlib.Path, mesh, tokenizer_dir, dtype, require_tokenizer):
  """An HF Llava directory converted on the fly (the converter's tables; nothing written)."""
  from acformer_jax.conversion import formats, pipeline  # pylint: disable=import-outside-toplevel
  plan = formats.make_plan("hf-llava", directory)
  if mesh is None:
    mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  mc, params = pipeline.build_params(plan, mesh)
  if dtype is not None:
    mc = dataclasses.replace(mc, dtype=dtype)
  return LoadedModel(mc, MultimodalLM(mc), params,
                     _tokenizer(directory, tokenizer_dir, require_tokenizer), directory)


def _tokenizer(directory: pathlib.Path, tokenizer_dir, require_tokenizer: bool):
  tok_dir = pathlib.Path(tokenizer_dir) if tokenizer_dir else params_store.find_tokenizer(directory)
  if tok_dir is None:
    if require_tokenizer:
      raise FileNotFoundError(
          f"no tokenizer in {directory} (looked for {params_store.TOKENIZER_DIR}/tokenizer.model"
          "|json and tokenizer.model|json); pass a tokenizer directory (--tokenizer)")
    return None
  from acformer_jax.data.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
  return load_tokenizer(tok_dir)

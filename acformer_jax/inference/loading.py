"""Loads a model for inference: config + Orbax params + tokenizer from one directory.

Layout (documented in docs/inference.md; written by :func:`save_for_inference`)::

  DIR/model_config.json   config.model_config_to_dict(ModelConfig)
  DIR/params/             Orbax StandardCheckpointer item: the unboxed params tree
                          {vision, connector, llm} (docs/design.md)
  DIR/tokenizer/          optional tokenizer files (tokenizer.model / tokenizer.json +
                          tokenizer_config.json); else tokenizer files in DIR itself

Restore is abstract-first (``docs/jax_practices.md`` items 3 and 6): ``jax.eval_shape(init)`` ->
logical partition specs -> ``NamedSharding`` on the mesh -> Orbax restore into them, so a
checkpoint restores onto any mesh and no host holds the full tree unsharded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from acformer_jax import config as config_lib
from acformer_jax import integrity
from acformer_jax import sharding as sharding_lib
from acformer_jax.models.mllm import MultimodalLM

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json")


@dataclasses.dataclass
class LoadedModel:
  """What :func:`load_for_inference` returns."""
  config: config_lib.ModelConfig
  model: MultimodalLM
  params: Any
  tokenizer: Any  # transformers tokenizer, or None when the directory has none
  directory: pathlib.Path


def read_model_config(directory) -> config_lib.ModelConfig:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found: an inference checkpoint directory needs {CONFIG_FILE} next to "
        f"its Orbax '{PARAMS_DIR}/' item (see docs/inference.md)")
  try:
    raw = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None
  try:
    return config_lib.model_config_from_dict(raw)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a ModelConfig: {e}") from None


def _dummy_inputs(mc: config_lib.ModelConfig):
  s = mc.vision.image_size
  ids = jnp.concatenate([jnp.ones((1, 1), jnp.int32),
                         jnp.full((1, config_lib.num_visual_tokens(mc)), mc.image_token_id,
                                  jnp.int32)], axis=1)
  return jnp.zeros((1, s, s, 3), jnp.float32), ids


def abstract_params(model: MultimodalLM) -> Any:
  """Boxed ``ShapeDtypeStruct`` params (logical axes kept); no FLOPs, no memory."""
  images, ids = _dummy_inputs(model.config)
  rngs = {"params": jax.random.PRNGKey(0)}
  return jax.eval_shape(
      lambda: model.init(rngs, images, ids, rng=jax.random.PRNGKey(1)))["params"]


def restore_target(model: MultimodalLM, mesh=None) -> Any:
  """Unboxed abstract params carrying their target shardings (mesh or one device)."""
  return sharded_abstract(abstract_params(model), mesh)


def sharded_abstract(boxed: Any, mesh=None) -> Any:
  """Boxed abstract params -> unboxed ``ShapeDtypeStruct`` s with their NamedShardings on
  ``mesh`` (from the logical axes), or all on the first device without a mesh."""
  if mesh is None:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: dev, nn.unbox(boxed))
  else:
    shardings = sharding_lib.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def find_tokenizer_dir(directory) -> Optional[pathlib.Path]:
  d = pathlib.Path(directory)
  for cand in (d / TOKENIZER_DIR, d):
    if any((cand / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
      return cand
  return None


def load_for_inference(directory, *, mesh=None, tokenizer_dir=None, dtype: Optional[str] = None,
                       require_tokenizer: bool = True) -> LoadedModel:
  """Builds the model and restores its params (sharded on ``mesh`` when given).

  Args:
    directory: checkpoint directory in the layout above, or a transformers Llava directory
      (converted on the fly).
    mesh: optional ``(data, fsdp, tensor)`` mesh to restore onto.
    tokenizer_dir: overrides the tokenizer location.
    dtype: optional compute dtype override (e.g. ``"bfloat16"``); params keep theirs.
    require_tokenizer: raise when no tokenizer is found (else ``tokenizer=None``).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  if not (directory / CONFIG_FILE).is_file() and is_hf_llava(directory):
    return _load_hf_llava(directory, mesh, tokenizer_dir, dtype, require_tokenizer)
  mc = read_model_config(directory)
  if dtype is not None:
    mc = dataclasses.replace(mc, dtype=dtype)
  model = MultimodalLM(mc)
  params_dir = directory / PARAMS_DIR
  if not params_dir.is_dir():
    raise FileNotFoundError(f"{params_dir} not found: expected the Orbax params item of "
                            f"an inference checkpoint (see docs/inference.md)")
  target = restore_target(model, mesh)
  try:
    params = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
  except (ValueError, KeyError) as e:
    raise ValueError(f"{params_dir}: the params do not match {directory / CONFIG_FILE} "
                     f"({type(e).__name__}: {str(e)[:500]})") from None
  integrity.verify(params, integrity.read_sidecar(params_dir), f"params {params_dir}")
  return LoadedModel(mc, model, params, _tokenizer(directory, tokenizer_dir, require_tokenizer),
                     directory)


def is_hf_llava(directory) -> bool:
  """True for a transformers ``LlavaForConditionalGeneration`` directory."""
  path = pathlib.Path(directory) / "config.json"
  try:
    return path.is_file() and json.loads(path.read_text()).get("model_type") == "llava"
  except ValueError:
    return False


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
  tok_dir = pathlib.Path(tokenizer_dir) if tokenizer_dir else find_tokenizer_dir(directory)
  tokenizer = None
  if tok_dir is None:
    if require_tokenizer:
      raise FileNotFoundError(
          f"no tokenizer in {directory} (looked for {TOKENIZER_DIR}/tokenizer.model|json and "
          "tokenizer.model|json); pass a tokenizer directory (--tokenizer)")
  else:
    from acformer_jax.data.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = load_tokenizer(tok_dir)
  return tokenizer


def save_params(path: pathlib.Path, params: Any, chunk_bytes: int = 64 << 20) -> None:
  """The Orbax params item of ``inference.loading`` (restored by its StandardCheckpointer
  and by the trainer's partial restore), written without OCDBT in ``chunk_bytes`` chunks.

  OCDBT buffers the compressed data of the whole save in memory until it commits
  (about 0.75x of the params for random bf16); per-array zarr chunks are written as
  they are compressed, so saving adds no memory peak (docs/jax_practices.md 9.1). Per-array
  checksums go to ``<path>_checksums.json`` (:mod:`acformer_jax.integrity`), verified on load.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=chunk_bytes), params)
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False))
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # Orbax warns that there is no OCDBT data to merge
  rec = integrity.record(params)
  try:
    ckptr.save(pathlib.Path(path).absolute(),
               args=ocp.args.PyTreeSave(params, save_args=save_args))
  finally:
    absl_log.setLevel(level)
  if jax.process_index() == 0:
    integrity.write_sidecar(path, rec)


def save_for_inference(directory, params, model_config: config_lib.ModelConfig,
                       tokenizer_dir: Optional[os.PathLike] = None) -> pathlib.Path:
  """Writes the layout above (params unboxed; ``directory`` must not hold a checkpoint)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_params(directory / PARAMS_DIR, nn.unbox(params))
  if jax.process_index() == 0:
    cfg = config_lib.model_config_to_dict(model_config)
    (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    if tokenizer_dir is not None:
      out = directory / TOKENIZER_DIR
      out.mkdir(exist_ok=True)
      found = [f for f in _TOKENIZER_FILES if (pathlib.Path(tokenizer_dir) / f).is_file()]
      if not any(f in found for f in ("tokenizer.model", "tokenizer.json")):
        raise FileNotFoundError(f"{tokenizer_dir} holds neither tokenizer.model nor tokenizer.json")
      for f in found:
        shutil.copy2(pathlib.Path(tokenizer_dir) / f, out / f)
  return directory

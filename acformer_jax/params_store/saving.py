"""Atomic writes of a params directory: temp dir + rename, never a half-written directory
under the final name, never non-finite params saved as good."""
from __future__ import annotations

import contextlib
import logging
import pathlib
import shutil
from typing import Any, Iterator, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax import config as config_lib
from acformer_jax import integrity
from acformer_jax.params_store import layout


class NonFiniteError(ValueError):
  """Params holding NaN or Inf, refused before anything is written."""


def barrier(name: str) -> None:
  """Waits for every process (no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def temp_dir_for(output) -> pathlib.Path:
  output = pathlib.Path(output)
  return output.parent / f".{output.name}.partial"


def commit_directory(tmp: pathlib.Path, output: pathlib.Path, overwrite: bool) -> None:
  """Renames the finished ``tmp`` into ``output`` (host 0). An existing ``output`` is moved
  aside first and removed only after the rename, so a crash never leaves a half-written
  directory under the final name."""
  old = output.parent / f".{output.name}.old"
  if output.exists():
    if not overwrite:
      raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
    output.rename(old)
  tmp.rename(output)
  shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(output, *, overwrite: bool = False, name: str = "params_store"
                     ) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory next to ``output``; renamed to ``output`` when the
  block ends without error, removed when it raises. Collective over processes (host 0 owns
  the directory; every process may write its shards into it)."""
  output = pathlib.Path(output).absolute()
  tmp = temp_dir_for(output)
  host0 = jax.process_index() == 0
  if output.exists() and not overwrite:  # every process raises (none waits at a barrier)
    raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
  if host0:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
  barrier(f"{name}:clean")
  try:
    yield tmp
    barrier(f"{name}:written")
    if host0:
      commit_directory(tmp, output, overwrite)
    barrier(f"{name}:committed")
  except BaseException:
    if host0:
      shutil.rmtree(tmp, ignore_errors=True)
    raise


def _finite_flags(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def check_finite(params: Any, what: str = "params") -> None:
  """Raises :class:`NonFiniteError` naming every leaf with a NaN or Inf (one reduction)."""
  named = [(integrity.leaf_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(params)
           if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  host = [(n, x) for n, x in named if isinstance(x, np.ndarray)]
  dev = [(n, x) for n, x in named if not isinstance(x, np.ndarray)]
  bad: List[str] = [n for n, x in host if not np.isfinite(x).all()]
  if dev:
    flags = jax.device_get(jax.jit(_finite_flags)([x for _, x in dev]))
    bad += [n for (n, _), ok in zip(dev, flags) if not ok]
  if bad:
    raise NonFiniteError(f"{what}: non-finite values (NaN/Inf) in {len(bad)} array(s), e.g. "
                         f"{sorted(bad)[:5]}; nothing was written")


def save_params(path, params: Any, chunk_bytes: int = 64 << 20) -> None:
  """Writes the Orbax ``params`` item (unboxed tree) plus its checksums sidecar.

  Written without OCDBT in ``chunk_bytes`` chunks: OCDBT buffers the compressed data of the
  whole save until it commits, per-array zarr chunks are written as they are compressed, so
  saving adds no memory peak (docs/jax_practices.md 9.1). Refuses non-finite params.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  params = nn.unbox(params)
  check_finite(params, f"params for {path}")
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


def write(directory, params: Any, model_config: config_lib.ModelConfig,
          tokenizer_dir=None) -> pathlib.Path:
  """Writes the layout into ``directory`` (an empty one, e.g. from :func:`atomic_directory`):
  params, ``model_config.json`` and, when given, the tokenizer files."""
  directory = pathlib.Path(directory)
  save_params(directory / layout.PARAMS_DIR, params)
  if jax.process_index() == 0:
    layout.write_model_config(directory, model_config)
    layout.copy_tokenizer(tokenizer_dir, directory / layout.TOKENIZER_DIR)
  return directory


def save(directory, params: Any, model_config: config_lib.ModelConfig,
         tokenizer_dir: Optional[Any] = None, *, overwrite: bool = False) -> pathlib.Path:
  """:func:`write` committed atomically to ``directory``; returns it (absolute)."""
  directory = pathlib.Path(directory).absolute()
  with atomic_directory(directory, overwrite=overwrite, name="params_store.save") as tmp:
    write(tmp, params, model_config, tokenizer_dir)
  return directory

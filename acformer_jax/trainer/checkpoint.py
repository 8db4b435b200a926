"""Orbax checkpoints: async saves, keep-N, exact resume, params-only init and export.

Spec: ``docs/jax_practices.md`` item 6 (one ``CheckpointManager`` with named items, interval and
preemption saves, keep-N, atomic commit, restore with target shardings so a checkpoint moves
between meshes, three entry points) and ``docs/environment.md`` 3 (``Composite`` items work).

Layout of a run directory ``<workdir>/checkpoints/<step>/``:

* ``state``: the :class:`TrainState` (``PyTreeSave``; arrays written per shard, OCDBT),
* ``data``: ``{"process_count": n, "states": [iterator state of host 0, 1, ...]}`` (JSON),
* ``config``: the full experiment config (JSON),
* ``integrity``: per-array checksums of ``state`` (:mod:`acformer_jax.integrity`; JSON),
  computed on the hosts that write the shards before the save starts.

Orbax writes a step into a temporary directory and renames it when every item is complete,
so a run killed mid-save leaves no half-visible step. A committed step that fails to restore
(e.g. truncated files) or whose arrays do not match their recorded checksums (flipped bytes)
is moved aside to ``corrupt_<step>_<time>`` and the previous one is used, with a warning. The
params-only export (:func:`export_for_inference`) is a params directory of
:mod:`acformer_jax.params_store` (read by ``generate`` / ``evaluate``); any of these can seed
a new run through ``params_store.restore``.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import threading
import time
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from acformer_jax import integrity
from acformer_jax import params_store

logger = logging.getLogger("acformer_jax.trainer.checkpoint")

ITEMS = ("state", "data", "config", "integrity")
EXPORT_CONFIG = "experiment_config.json"


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: Optional[Mapping[str, Any]]
  config: Optional[Mapping[str, Any]]


def _gather_json(obj) -> list:
  """Every process's JSON-able ``obj`` on every process (one entry per process)."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  n = int(np.max(multihost_utils.process_allgather(np.array([raw.size], np.int32))))
  buf = np.zeros((n,), np.uint8)
  buf[:raw.size] = raw
  rows = multihost_utils.process_allgather(buf[None], tiled=True)
  return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in np.asarray(rows)]


def data_state_for_this_process(saved: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
  """Picks this host's iterator state from a saved ``data`` item."""
  if not saved:
    return None
  states = saved.get("states") or []
  if len(states) != jax.process_count():
    raise ValueError(
        f"checkpoint data item holds iterator states of {len(states)} processes but this run has "
        f"{jax.process_count()}; resume with the same number of hosts (params can still be "
        "loaded with init.from_checkpoint)")
  return states[jax.process_index()]


# Replica-parallel saving splits every replicated array into per-replica slices with eager
# ``lax.slice`` calls (one compile per shape); below this size the split costs more than it saves.
MIN_REPLICA_SLICE_BYTES = 8 << 20


def state_handler() -> ocp.PyTreeCheckpointHandler:
  """The ``state`` item's handler: Orbax defaults, replica-parallel only for big slices."""
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()), (str, th.StringHandler()),
      (jax.Array, th.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _restore_args(abstract):
  return ocp.checkpoint_utils.construct_restore_args(abstract)


class CheckpointStore:
  """``CheckpointManager`` over ``directory`` with the items ``state``, ``data``, ``config``.

  Args:
    directory: the checkpoint root (created if missing).
    save_every: interval of regular saves in steps.
    keep: how many checkpoints to keep (older ones are deleted after a new commit).
    async_save: write in a background thread (the step loop continues).
  """

  def __init__(self, directory, *, save_every: int, keep: int, async_save: bool = True):
    if save_every < 1 or keep < 1:
      raise ValueError(f"checkpoint.every={save_every} and checkpoint.keep={keep} must be >= 1")
    self.directory = pathlib.Path(directory).absolute()
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    handlers = {"state": state_handler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(), "integrity": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  def all_steps(self) -> Sequence[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """On the interval (Orbax's default would also save the first step of a run)."""
    latest = self.latest_step()
    return step % self.save_every == 0 and (latest is None or step > latest)

  def save(self, step: int, state, data_state: Mapping[str, Any], config: Mapping[str, Any], *,
           force: bool = False) -> bool:
    """Saves when ``step`` is on the interval (or ``force``); returns whether it started."""
    if not force and not self.should_save(step):
      return False
    states = _gather_json(data_state)
    args = ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave({"process_count": len(states), "states": states}),
        config=ocp.args.JsonSave(json.loads(json.dumps(config, default=str))),
        integrity=ocp.args.JsonSave(integrity.record(state)))
    return bool(self.manager.save(step, args=args, force=force))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def restore(self, step: int, abstract_state) -> Restored:
    """Restores ``step`` onto the shardings carried by ``abstract_state`` (any mesh) and
    verifies its arrays against the recorded checksums (:class:`integrity.IntegrityError`)."""
    items = dict(state=ocp.args.PyTreeRestore(abstract_state, restore_args=_restore_args(abstract_state)),
                 data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    checked = (self.directory / str(step) / "integrity").is_dir()
    if checked:
      items["integrity"] = ocp.args.JsonRestore()
    else:
      logger.warning("checkpoint step %d in %s records no checksums (written by an older "
                     "version); restored unverified", step, self.directory)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    if checked:
      integrity.verify(out.state, out.integrity, f"checkpoint step {step} in {self.directory}")
    return Restored(step, out.state, out.data, out.config)

  def read_config(self, step: int) -> Optional[Mapping[str, Any]]:
    """The ``config`` item of ``step`` (None when it cannot be read)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    except Exception:  # pylint: disable=broad-except
      return None

  def restore_latest(self, abstract_state) -> Optional[Restored]:
    """The newest checkpoint that restores; broken newer ones are set aside with a warning."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        logger.warning("checkpoint step %d in %s cannot be restored (%s: %s); falling back to "
                       "the previous checkpoint", step, self.directory, type(e).__name__, e)
        self._set_aside(step)
    return None

  def _set_aside(self, step: int) -> None:
    src = self.directory / str(step)
    if jax.process_index() == 0 and src.exists():
      dst = self.directory / f"corrupt_{step}_{int(time.time())}"
      os.rename(src, dst)
      logger.warning("moved unreadable checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"acformer_set_aside_{step}")
    self.manager.reload()


# -- params only -----------------------------------------------------------------------------
def export_for_inference(directory, params, model_config, *, tokenizer_dir=None,
                         experiment_config: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
  """Writes a params directory (:mod:`acformer_jax.params_store`: ``params/``,
  ``model_config.json``, ``tokenizer/``) plus ``experiment_config.json``; readable by
  ``generate`` / ``evaluate``. Committed atomically (never a half-written ``directory``),
  replacing an older export; non-finite params are refused."""
  if tokenizer_dir is not None and not pathlib.Path(tokenizer_dir).is_dir():
    logger.warning("tokenizer directory %s not found; exporting without a tokenizer", tokenizer_dir)
    tokenizer_dir = None
  if jax.process_count() == 1:
    # One host holds every shard anyway: writing host arrays avoids Orbax's per-replica
    # slicing of replicated arrays (an eager op per slice), which dominates tiny exports.
    params = jax.device_get(params)
  with params_store.atomic_directory(directory, overwrite=True, name="acformer_export") as tmp:
    params_store.write(tmp, params, model_config, tokenizer_dir)
    if experiment_config is not None and jax.process_index() == 0:
      (tmp / EXPORT_CONFIG).write_text(json.dumps(experiment_config, indent=2, default=str) + "\n")
  return pathlib.Path(directory).absolute()


# -- preemption --------------------------------------------------------------------------------
class PreemptionWatcher:
  """SIGTERM -> "save now and stop". Multi-host runs ask JAX's preemption sync manager, so
  every host stops at the same step; single-process runs use a signal handler."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    logger.warning("SIGTERM received: saving a checkpoint and stopping")
    self._flag.set()

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service not started (no jax.distributed)
        return False
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

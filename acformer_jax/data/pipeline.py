"""Host-local input pipeline: shard, shuffle, process, batch, prefetch; resumable.

Spec: ``docs/design.md`` "Batches", ``docs/method.md`` 2.2-2.7, ``docs/jax_practices.md`` (per-host
data). Each host reads its own shard (:mod:`acformer_jax.data.sampler`) of a random-access
tfds data source, turns records into tokens + pixels (bad samples are skipped and counted by
reason), packs fixed-shape batches of ``global_batch / process_count`` rows and prefetches them
on a background thread. Epochs chain without a break (so all hosts always have data).
Rows are filled by :mod:`acformer_jax.data.packing` (several samples per row with
``data.packing``, else one) in the :mod:`acformer_jax.batch` format.

Packing groups (:func:`sampler.packing_groups`): the global order is split into ``G`` sub-streams,
each packed by its own packer into ``global_batch / G`` rows per step; a host packs the groups it
owns and emits their rows in group order, so the global batch does not depend on the number of
hosts (any process count dividing ``G``). Unpacked runs use one group per host.

:meth:`DataIterator.get_state` is a small JSON-serialisable dict (per owned group: epoch,
position in the group's sub-stream, the record indices of the samples its packer carries over;
counters) describing the point *after the last batch returned*; a fresh iterator given that
state with :meth:`DataIterator.set_state` re-processes the carried records (processing is
deterministic) and yields exactly the batches that would have come next.
"""
from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import json
import queue
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from acformer_jax import batch as batch_lib
from acformer_jax.data import packing as packing_lib
from acformer_jax.data import sampler
from acformer_jax.data.packing import PackSpec, collate  # noqa: F401  (collate: the batch builder)
from acformer_jax.data.preprocess import CLIP_MEAN, CLIP_STD, preprocess_image
from acformer_jax.data.templates import IGNORE_INDEX, SampleError, tokenize_conversation

STATE_VERSION = 3
_END = object()


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """Everything needed to turn one record into a training row."""
  template: str
  max_length: int
  image_size: int
  pad_to_square: bool
  num_visual_tokens: int
  image_token_id: int
  overlong: str = "truncate"
  image_mean: Tuple[float, float, float] = CLIP_MEAN  # the tower's (models/towers.py)
  image_std: Tuple[float, float, float] = CLIP_STD


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def record_conversations(record: Mapping[str, Any]) -> List[Dict[str, str]]:
  """tfds returns a Sequence of dicts as a dict of lists of bytes; rebuild LLaVA's list."""
  conv = record["conversations"]
  if isinstance(conv, Mapping):
    return [{"from": _text(f), "value": _text(v)} for f, v in zip(conv["from"], conv["value"])]
  return [{"from": _text(m["from"]), "value": _text(m["value"])} for m in conv]


def process_record(record: Mapping[str, Any], spec: SampleSpec, encoder) -> Dict[str, Any]:
  """One record -> ``{input_ids, labels, image, has_image, truncated}``.

  Raises:
    SampleError: text reasons (see :func:`templates.normalize_turns`, ``too_long``,
      ``no_supervised_tokens``, ``tokenization_mismatch``), then ``missing_image`` /
      ``corrupt_image``.
  """
  has_image = bool(record["has_image"])
  tok = tokenize_conversation(
      record_conversations(record), has_image=has_image, template=spec.template, encoder=encoder,
      num_visual_tokens=spec.num_visual_tokens, image_token_id=spec.image_token_id,
      max_length=spec.max_length, overlong=spec.overlong)
  image = None
  if has_image:
    data = record["image"]
    if not data:
      raise SampleError("missing_image", f"image file {_text(record.get('image_path', b''))!r} was not found")
    try:
      image = preprocess_image(bytes(data), spec.image_size, pad_to_square=spec.pad_to_square,
                               mean=spec.image_mean, std=spec.image_std)
    except Exception as e:  # PIL raises many types on bad data  # pylint: disable=broad-except
      raise SampleError("corrupt_image",
                        f"image {_text(record.get('image_path', b''))!r} cannot be decoded: {e}") from None
  return {"input_ids": tok.input_ids, "labels": tok.labels, "image": image,
          "has_image": has_image, "truncated": tok.truncated}


class DataIterator:
  """Iterator of host-local batches with exact resume (see the module docstring)."""

  def __init__(self, source, *, spec: SampleSpec, encoder, global_batch: int, process_index: int = 0,
               process_count: int = 1, seed: int = 0, shuffle: bool = True,
               lengths: Optional[Sequence[int]] = None, num_epochs: Optional[int] = None,
               drop_remainder: bool = True, prefetch: int = 2, num_workers: int = 2,
               with_index: bool = False, build_skipped: Optional[Mapping[str, int]] = None,
               packing: Optional[PackSpec] = None, packing_groups: Optional[int] = None):
    if global_batch % process_count:
      raise ValueError(f"global_batch {global_batch} must be divisible by process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    self._source, self._spec, self._encoder = source, spec, encoder
    self._num = len(source)
    if self._num == 0:
      raise ValueError("the data source is empty")
    self._global, self._local = global_batch, global_batch // process_count
    self._pi, self._pc, self._seed, self._shuffle = process_index, process_count, int(seed), shuffle
    self._lengths = None if lengths is None else np.asarray(lengths)
    self._num_epochs, self._drop = num_epochs, drop_remainder
    self._prefetch, self._workers, self._with_index = max(1, prefetch), num_workers, with_index
    self.build_skipped = dict(build_skipped or {})
    self._pack = packing or PackSpec(spec.max_length, 1, 0, one_per_row=True)
    if self._pack.max_length != spec.max_length:
      raise ValueError(f"packing.max_length {self._pack.max_length} != spec.max_length {spec.max_length}")
    self._groups = sampler.packing_groups(global_batch, process_count, packing_groups,
                                          packing=not self._pack.one_per_row)
    per_host = self._groups // process_count
    self._owned = list(range(process_index * per_host, (process_index + 1) * per_host))
    self._group_rows = global_batch // self._groups
    # packing_lookahead is the budget of the whole global batch, shared out over the groups.
    self._group_pack = dataclasses.replace(self._pack,
                                           lookahead=-(-self._pack.lookahead // self._groups))
    self._shape = batch_lib.BatchShape(rows=self._local, length=spec.max_length,
                                       images_per_row=self._pack.max_images, image_size=spec.image_size)
    self._fingerprint = {"num_records": self._num, "seed": self._seed, "process_index": process_index,
                         "process_count": process_count, "global_batch": global_batch,
                         "shuffle": bool(shuffle), "group_by_length": lengths is not None,
                         "packing": [not self._pack.one_per_row, self._pack.max_length,
                                     self._pack.max_images, self._pack.lookahead],
                         "packing_groups": self._groups}
    zero = {"tokens": 0, "token_slots": 0, "images": 0, "image_slots": 0}
    groups = [{"group": g, "epoch": 0, "position": 0, "carried": []} for g in self._owned]
    self._state = {"version": STATE_VERSION, "epoch": 0, "groups": groups, "batches": 0,
                   "samples": 0, "truncated": 0, "skipped": {}, "packed": dict(zero),
                   "last_packed": dict(zero), "fingerprint": dict(self._fingerprint)}
    self._thread = self._queue = self._stop = None
    self._shard_cache: Dict[int, Dict[int, np.ndarray]] = {}  # epoch -> group -> sub-stream

  @property
  def num_records(self) -> int:
    """Samples in the data source (after build-time skips); see :mod:`acformer_jax.data.epochs`."""
    return self._num

  # -- state -------------------------------------------------------------------------------
  def get_state(self) -> Dict[str, Any]:
    """JSON-serialisable position after the last returned batch."""
    return copy.deepcopy(self._state)

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a :meth:`get_state` dict (also accepts its JSON string)."""
    if isinstance(state, (str, bytes)):
      state = json.loads(state)
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"iterator state version {state.get('version')!r}, expected {STATE_VERSION}")
    for key, want in self._fingerprint.items():
      got = state.get("fingerprint", {}).get(key)
      if got != want:
        raise ValueError(f"iterator state field fingerprint.{key}={got!r} does not match this pipeline ({want!r})")
    self.close()
    self._state = copy.deepcopy(dict(state))

  def stats(self) -> Dict[str, Any]:
    """Counters for the training log: skips by reason (pipeline and build time), truncations,
    packing efficiency (real tokens / token slots, real images / image slots; cumulative and
    of the last batch; ``samples_per_row`` of the last batch)."""
    st = self._state
    skipped = dict(st["skipped"])
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    tot, last = st["packed"], st["last_packed"]
    return {"skipped": skipped, "skipped_total": sum(skipped.values()), "truncated": st["truncated"],
            "samples": st["samples"], "batches": st["batches"],
            "epoch": st["epoch"], "build_skipped": dict(self.build_skipped),
            "carried": sum(len(g["carried"]) for g in st["groups"]),
            "token_efficiency": ratio(tot["tokens"], tot["token_slots"]),
            "image_efficiency": ratio(tot["images"], tot["image_slots"]),
            "last_token_efficiency": ratio(last["tokens"], last["token_slots"]),
            "last_image_efficiency": ratio(last["images"], last["image_slots"]),
            "last_samples_per_row": ratio(last.get("samples", 0), self._local)}

  # -- iteration ---------------------------------------------------------------------------
  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._thread is None:
      self._start()
    item = self._queue.get()
    if item is _END:
      self._queue.put(_END)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    batch, self._state = item
    return batch

  def close(self) -> None:
    """Stops the prefetch thread (the state stays where it is)."""
    if self._thread is not None:
      self._stop.set()
      while self._thread.is_alive():
        try:
          self._queue.get(timeout=0.05)
        except queue.Empty:
          pass
      self._thread = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def _start(self):
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(copy.deepcopy(self._state),), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _shard(self, epoch: int, group: int) -> np.ndarray:
    """Group ``group``'s sub-stream of ``epoch`` (the same for any process count)."""
    if epoch not in self._shard_cache:
      order = sampler.epoch_order(self._num, epoch, self._seed, shuffle=self._shuffle,
                                  lengths=self._lengths, global_batch=self._global)
      for old in sorted(self._shard_cache)[:-1]:  # groups may straddle two epochs
        del self._shard_cache[old]
      self._shard_cache[epoch] = {g: sampler.host_shard(order, self._global, g, self._groups)
                                  for g in self._owned}
    return self._shard_cache[epoch][group]

  def _candidates(self, group: int, epoch: int, position: int):
    while self._num_epochs is None or epoch < self._num_epochs:
      shard = self._shard(epoch, group)
      for pos in range(position, len(shard)):
        if self._stop.is_set():
          return
        idx = int(shard[pos])
        yield epoch, pos, idx, self._source[idx]
      epoch, position = epoch + 1, 0

  def _work(self, item):
    try:
      return process_record(item[3], self._spec, self._encoder)
    except SampleError as e:
      return e

  def _results(self, items, pool):
    if pool is None:
      for item in items:
        yield item, self._work(item)
      return
    pending = collections.deque()
    for item in items:
      pending.append((item, pool.submit(self._work, item)))
      if len(pending) > 2 * self._workers + self._group_rows:
        head, fut = pending.popleft()
        yield head, fut.result()
    while pending:
      head, fut = pending.popleft()
      yield head, fut.result()

  def _stream(self, state: Dict[str, Any], group: Dict[str, Any], pool):
    """Good ``(record index, sample)`` pairs of one group after its position; updates ``group``
    (epoch, position) and ``state`` (skips, truncations) as each one is handed out."""
    run = {"epoch": group["epoch"], "good": 0, "skipped": 0}  # guards against all-bad data
    g = group["group"]
    for (epoch, pos, idx, _), result in self._results(
        self._candidates(g, group["epoch"], group["position"]), pool):
      if self._stop.is_set():
        return
      if epoch != run["epoch"]:
        if run["good"] == 0 and run["skipped"] >= len(self._shard(run["epoch"], g)):
          raise RuntimeError(f"every sample of epoch {run['epoch']} in packing group {g} was skipped: "
                             f"{state['skipped']} (check data.max_length / template / data paths)")
        run = {"epoch": epoch, "good": 0, "skipped": 0}
      group["epoch"], group["position"] = epoch, pos + 1
      if isinstance(result, SampleError):
        state["skipped"][result.reason] = state["skipped"].get(result.reason, 0) + 1
        run["skipped"] += 1
        continue
      run["good"] += 1
      state["truncated"] += int(result["truncated"])
      yield idx, result

  def _restore_carried(self, carried: Sequence[int]) -> List[Any]:
    """Re-processes the records the packer carried over (deterministic: same samples)."""
    out = []
    for idx in carried:
      result = self._work((None, None, idx, self._source[int(idx)]))
      if isinstance(result, SampleError):
        raise RuntimeError(f"carried-over record {idx} failed on re-processing ({result}); the "
                           "iterator state does not match this data source")
      out.append((int(idx), result))
    return out

  def _emit(self, rows, state: Dict[str, Any]) -> bool:
    state["epoch"] = min(g["epoch"] for g in state["groups"])
    samples = [[s for _, s in row] for row in rows]
    idxs = [[i for i, _ in row] for row in rows] if self._with_index else None
    batch = collate(samples, self._shape, self._encoder.pad_id, idxs)
    eff = packing_lib.efficiency(batch)
    eff["samples"] = sum(len(r) for r in rows)
    state["batches"] += 1
    state["samples"] += eff["samples"]
    state["last_packed"] = eff
    for k in state["packed"]:
      state["packed"][k] += eff[k]
    return self._put((batch, copy.deepcopy(state)))

  def _pack_step(self, carried, streams, state):
    """One step of every owned group: ``(rows in group order, any group's stream ran dry)``."""
    rows, exhausted = [], False
    for k, group in enumerate(state["groups"]):
      got, carried[k], dry = packing_lib.pack_batch(carried[k], streams[k], self._group_rows,
                                                    self._group_pack, sample_of=lambda item: item[1])
      group["carried"] = [i for i, _ in carried[k]]
      rows.extend(got)
      exhausted = exhausted or dry
    return rows, exhausted

  def _produce(self, state: Dict[str, Any]) -> None:
    pool = None
    try:
      if self._workers > 0:
        pool = concurrent.futures.ThreadPoolExecutor(self._workers)
      carried = [self._restore_carried(g["carried"]) for g in state["groups"]]
      streams = [self._stream(state, g, pool) for g in state["groups"]]
      while True:
        rows, exhausted = self._pack_step(carried, streams, state)
        if self._stop.is_set():
          return
        if exhausted and (self._drop or not any(rows)):
          break  # a finite run ends; without drop_remainder its tail is padded out first
        if not self._emit(rows, state):
          return
      self._put(_END)
    except BaseException as e:  # surfaced to the consumer  # pylint: disable=broad-except
      self._put(e)
    finally:
      if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)

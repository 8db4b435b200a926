"""Batched KV-cache generation for the MultimodalLM (host side of ``programs.py``).

Spec: ``docs/benchmarks.md`` section 1 (greedy decoding, stop at EOS, KV cache on) and
``docs/jax_practices.md`` item 11 (separate prefill and decode, preallocated sharded KV cache
with its own logical axes, the decode loop as one jitted ``lax.while_loop``, vision
features computed once per request).

Batching: prompts are **left**-padded to a bucket length ``P`` (a multiple of
``bucket_multiple``) so every row's last prompt token sits in slot ``P - 1`` and the
generated tokens share cache slots ``P, P+1, ...``. Pad slots are hidden by ``kv_mask``
and RoPE positions count real tokens only, so a row's result does not depend on the
other rows or on the padding (batched greedy == batch-size-1 greedy). The decode mask is
constant: ``kv_mask = [prompt_mask, 1...]``; causality hides the slots not yet written.

Each ``(batch, P, max_new_tokens, sampler)`` combination is traced and compiled once
(``Engine.num_traces`` counts the traces); engines over the same model share them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax import config as config_lib
from acformer_jax import sharding as sharding_lib
from acformer_jax.inference import programs as programs_lib
from acformer_jax.inference import sampling


@dataclasses.dataclass
class Request:
  """One prompt. ``input_ids`` already hold ``num_visual_tokens`` copies of
  ``image_token_id`` where the image goes (or none for a text-only prompt); ``image``
  is the preprocessed ``float32 [S, S, 3]`` image (ignored for text-only prompts)."""
  input_ids: Sequence[int]
  image: Optional[np.ndarray] = None


@dataclasses.dataclass
class Result:
  """Generated ids (without the EOS / stop sequence that ended them) and why they ended:
  ``"eos"``, ``"stop"`` (a stop token sequence) or ``"length"``. ``scores`` (float32
  ``[n, V]``, the logits each generated token was chosen from) when requested."""
  tokens: List[int]
  finish_reason: str
  scores: Optional[np.ndarray] = None


def bucket_length(n: int, multiple: int) -> int:
  """Prompt length ``n`` rounded up to a multiple of ``multiple`` (the jit bucket)."""
  if n < 1:
    raise ValueError(f"prompt must have at least one token, got length {n}")
  return int(math.ceil(n / multiple) * multiple)


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> Tuple[np.ndarray, np.ndarray]:
  """``(ids int32 [B, length], mask int32 [B, length])`` with each row right-aligned."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    if len(r) > length:
      raise ValueError(f"prompt {i} has {len(r)} tokens, more than the bucket {length}")
    if len(r):
      ids[i, length - len(r):] = r
      mask[i, length - len(r):] = 1
  return ids, mask


class Engine:
  """Jitted batched generation with a ``MultimodalLM`` (docs/design.md, "MLLM").

  Args:
    model: a ``MultimodalLM`` (methods ``encode_images``, ``embed``, ``decode``).
    params: its parameter tree (unboxed; already placed, or placed by ``mesh``).
    batch_size: requests per compiled call; they are processed in chunks of this size
      and every chunk is filled with dummy rows up to :attr:`rows` (so the last chunk
      does not recompile). With a mesh, ``rows`` is rounded up to a multiple of the
      ``data * fsdp`` size the batch is sharded over.
    bucket_multiple: prompt lengths are rounded up to a multiple of this.
    mesh: optional ``(data, fsdp, tensor)`` mesh; the model's logical constraints and
      the KV cache's logical axes (``cache_*``) are resolved on it through
      ``sharding.LOGICAL_AXIS_RULES``. Params must already be sharded on it.
  """

  def __init__(self, model, params, *, batch_size: int = 1, bucket_multiple: int = 64,
               mesh=None):
    self.model = model
    self.config: config_lib.ModelConfig = model.config
    self.params = params
    self.batch_size = int(batch_size)
    self.bucket_multiple = int(bucket_multiple)
    self.mesh = mesh
    self.num_visual_tokens = config_lib.num_visual_tokens(self.config)
    self.programs = programs_lib.programs(model, mesh)

  @property
  def rows(self) -> int:
    """Rows of every compiled call: ``batch_size`` rounded up to the data-parallel size."""
    if self.mesh is None:
      return self.batch_size
    dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    return -(-self.batch_size // dp) * dp

  @property
  def num_traces(self) -> int:
    """How often the (shared) prefill / decode programs were traced so far."""
    return self.programs.traces

  # ---- host API ----------------------------------------------------------------------

  def _check(self, r: Request, i: int) -> bool:
    n_img = sum(1 for t in r.input_ids if t == self.config.image_token_id)
    if n_img not in (0, self.num_visual_tokens):
      raise ValueError(
          f"request {i}: {n_img} image tokens (id {self.config.image_token_id}); expected 0 "
          f"or num_visual_tokens={self.num_visual_tokens} (expand the <image> placeholder)")
    if n_img and r.image is None:
      raise ValueError(f"request {i}: the prompt has image tokens but no image was given")
    size = self.config.vision.image_size
    if n_img and np.shape(r.image) != (size, size, 3):
      raise ValueError(f"request {i}: image shape {np.shape(r.image)}, expected "
                       f"{(size, size, 3)} (preprocess it first)")
    return n_img > 0

  def generate(self, requests: Sequence[Request], *, max_new_tokens: int,
               sampler: sampling.SamplerConfig = sampling.GREEDY, rng=None,
               stop_token_ids: Sequence[Sequence[int]] = (),
               eos_token_id: Optional[int] = None,
               return_scores: bool = False) -> List[Result]:
    """Generates for every request (in chunks of ``batch_size``), in request order.

    Args:
      requests: the prompts.
      max_new_tokens: generation budget per request (static: one compile per value).
      sampler: greedy by default (``docs/benchmarks.md`` 1).
      rng: PRNG key for sampling (default ``PRNGKey(0)``).
      stop_token_ids: token sequences that end a row when it generates them (checked in
        the loop; the sequence is removed from the result).
      eos_token_id: defaults to ``config.llm.eos_token_id`` (a traced value: no recompile).
      return_scores: also return the logits of every generated token.
    """
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    stop_seqs = tuple(tuple(int(t) for t in s) for s in stop_token_ids if len(s))
    positions = self.config.llm.max_position_embeddings
    for i, r in enumerate(requests):
      self._check(r, i)  # all requests are validated before any work is done
      if len(r.input_ids) + max_new_tokens > positions:
        raise ValueError(
            f"request {i}: a prompt of {len(r.input_ids)} tokens plus max_new_tokens="
            f"{max_new_tokens} needs {len(r.input_ids) + max_new_tokens} positions, more than "
            f"the model's {positions} (llm.max_position_embeddings); shorten the prompt or "
            "lower max_new_tokens")
    eos = self.config.llm.eos_token_id if eos_token_id is None else int(eos_token_id)
    results = []
    for start in range(0, len(requests), self.batch_size):
      chunk = list(requests[start:start + self.batch_size])
      results += self._generate_chunk(chunk, start, max_new_tokens, sampler,
                                      jax.random.fold_in(rng, start), stop_seqs, eos,
                                      return_scores)
    return results

  def _generate_chunk(self, chunk, offset, max_new_tokens, sampler, rng, stop_seqs, eos,
                      return_scores):
    has_image = [self._check(r, offset + i) for i, r in enumerate(chunk)]
    with_images = any(has_image)
    n_real = len(chunk)
    rows = [list(r.input_ids) for r in chunk]
    rows += [[self.config.llm.bos_token_id]] * (self.rows - n_real)
    p = bucket_length(max(len(r) for r in rows), self.bucket_multiple)
    ids, mask = left_pad(rows, p, self.config.llm.pad_token_id)
    size = self.config.vision.image_size
    images = np.zeros((self.rows, size, size, 3) if with_images else (0,), np.float32)
    for i, r in enumerate(chunk):
      if has_image[i]:
        images[i] = np.asarray(r.image, np.float32)
    args = self._place(images, ids, mask)
    extras = (jnp.asarray(np.arange(self.rows) < n_real), rng, jnp.int32(eos),
              jnp.asarray(stop_sequence_array(stop_seqs)))  # valid rows, rng, eos, stops
    with self.programs.context():  # only the jitted calls run under the mesh
      last, cache, kv_mask, lengths = self.programs.prefill(
          self.params, *args, extra=max_new_tokens - 1, with_images=with_images)
      out, num, reason, scores, _ = self.programs.decode(
          self.params, cache, kv_mask, lengths, last, *extras,
          max_new_tokens=max_new_tokens, sampler=sampler, return_scores=return_scores)
    out, num, reason = to_host(out), to_host(num), to_host(reason)
    scores = to_host(scores) if return_scores else None
    results = []
    for i in range(n_real):
      toks = out[i, :num[i]].tolist()
      kind = {0: "length", 1: "eos", 2: "stop"}[int(reason[i])]
      if kind == "eos":
        toks = toks[:-1]
      elif kind == "stop":
        toks = toks[:len(toks) - len(_matched(toks, stop_seqs))]
      results.append(Result(toks, kind, None if scores is None else scores[i, :num[i]]))
    return results

  def _place(self, *arrays):
    if self.mesh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    spec = sharding_lib.logical_to_mesh_spec(("activation_batch",))
    out = []
    for a in arrays:
      if a.ndim == 1 and a.shape[0] == 0:
        out.append(jnp.asarray(a))
        continue
      full = jax.sharding.PartitionSpec(*spec, *([None] * (a.ndim - 1)))
      # Every process holds the whole batch; each one places its addressable shards
      # (multi-process meshes, e.g. the evaluation inside a multi-host training job).
      out.append(jax.make_array_from_callback(
          a.shape, jax.sharding.NamedSharding(self.mesh, full), lambda idx, a=a: a[idx]))
    return tuple(out)


def to_host(x) -> np.ndarray:
  """A device array as numpy, gathered from every process when it spans several."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def stop_sequence_array(seqs: Sequence[Sequence[int]], multiple: int = 4) -> np.ndarray:
  """Stop token sequences as ``int32 [n, L]``, right-aligned and left-padded with a
  wildcard; ``n`` and ``L`` are rounded up to ``multiple`` (>= 1 row) so that different
  stop lists share one compiled loop. Padding rows can never match."""
  n = max(1, len(seqs))
  width = max([1] + [len(s) for s in seqs])
  shape = (-(-n // multiple) * multiple, -(-width // multiple) * multiple)
  arr = np.full(shape, programs_lib.ANY_TOKEN, np.int32)
  arr[:, -1] = programs_lib.NO_TOKEN
  for i, s in enumerate(seqs):
    if any(t < 0 for t in s):
      raise ValueError(f"stop sequence {list(s)} has negative token ids")
    arr[i, shape[1] - len(s):] = s
  return arr


def _matched(tokens: List[int], stop_seqs) -> Tuple[int, ...]:
  for seq in stop_seqs:
    if len(tokens) >= len(seq) and tuple(tokens[-len(seq):]) == seq:
      return seq
  return ()


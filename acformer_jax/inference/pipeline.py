"""Text-level generation: prompt strings + PIL images in, answers out.

Implements LLaVA-1.5's inference protocol (``docs/benchmarks.md`` section 1): the ``vicuna_v1`` prompt,
chunk-wise tokenisation around ``<image>`` (``data.templates.tokenize_chunks``), the
placeholder expanded to ``num_visual_tokens`` image ids, pad-to-square CLIP preprocessing,
greedy decoding that stops at EOS, decoding with special tokens skipped and stripped.

``load_generate_fn(checkpoint)`` is the factory ``python -m acformer_jax.evaluate run``
uses (``--engine acformer_jax.inference:load_generate_fn``); the returned function follows
the runner's contract (``evals/runner.py``): ``generate_fn(batch, *, max_new_tokens)`` with
``batch = [(PIL image | None, full prompt with <image>)]`` -> ``list[str]``.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple

import jax
import numpy as np

from acformer_jax import config as config_lib
from acformer_jax import sharding as sharding_lib
from acformer_jax.data import preprocess, templates
from acformer_jax.models.towers import tower
from acformer_jax.data.tokenizer import make_encoder
from acformer_jax.models import registry
from acformer_jax.inference import engine as engine_lib
from acformer_jax.inference import loading, sampling

logger = logging.getLogger("acformer_jax.inference.pipeline")


def prepare_image(img, image_size: int, mean=preprocess.CLIP_MEAN,
                  std=preprocess.CLIP_STD) -> np.ndarray:
  """PIL image -> normalised ``float32 [S, S, 3]`` with LLaVA's pad-to-square (``mean`` /
  ``std``: the tower's; CLIP's by default).

  The image is padded in the mode it was opened in (LLaVA's ScienceQA / MMBench loaders
  do not convert to RGB first; ``docs/benchmarks.md`` 1), then converted and resized.
  """
  if getattr(img, "mode", "RGB") != "RGB":
    try:
      img = preprocess.expand_to_square(img, tuple(int(m * 255) for m in mean))
    except (TypeError, ValueError):  # modes without an RGB fill (e.g. "1", "I;16")
      pass
  return preprocess.preprocess_image(img, image_size, pad_to_square=True, mean=mean, std=std)


def conversation_prompt(history: Sequence[Tuple[str, str]], question: str, *,
                        has_image: bool, template: str = "vicuna_v1") -> str:
  """Prompt for the next answer after ``history`` = [(question, answer), ...].

  The image goes into the first user turn (``"<image>\\n" + question``), as in LLaVA's CLI.
  The result is the template's render of the conversation up to ``"ASSISTANT:"``.
  """
  template = templates.canonical_template(template)
  if template != "vicuna_v1" and history:
    raise ValueError(f"multi-turn chat needs the vicuna_v1 template, got {template!r}")
  if not history:
    return templates.generation_prompt(question, has_image=has_image, template=template)
  turns = []
  for i, (q, a) in enumerate(list(history) + [(question, "x")]):
    if i == 0 and has_image:
      q = templates.IMAGE_TOKEN + "\n" + q
    turns += [("human", q), ("gpt", a)]
  prompt, spans = templates.build_prompt(turns, template)
  return prompt[:spans[-1][0]]


class Generator:
  """Engine + tokenizer + preprocessing of one loaded checkpoint.

  Args:
    loaded: a :class:`loading.LoadedModel` (with a tokenizer).
    batch_size: rows per compiled call (grown to the largest batch seen).
    bucket_multiple: prompt-length bucket of the engine.
    mesh: the mesh the params live on (None: one device).
  """

  def __init__(self, loaded: loading.LoadedModel, *, batch_size: int = 1,
               bucket_multiple: int = 64, mesh=None):
    if loaded.tokenizer is None:
      raise ValueError(f"{loaded.directory}: a tokenizer is needed for text generation")
    self.loaded = loaded
    self.config = loaded.config
    self.tokenizer = loaded.tokenizer
    self.encoder = make_encoder(loaded.tokenizer)
    self.num_visual_tokens = config_lib.num_visual_tokens(self.config)
    self.engine = engine_lib.Engine(loaded.model, loaded.params, batch_size=batch_size,
                                    bucket_multiple=bucket_multiple, mesh=mesh)
    if self.encoder.eos_id is not None and self.encoder.eos_id != self.config.llm.eos_token_id:
      raise ValueError(f"tokenizer EOS id {self.encoder.eos_id} != llm.eos_token_id "
                       f"{self.config.llm.eos_token_id} in {loaded.directory}")

  def encode(self, prompt: str, has_image: bool, index: int = 0) -> np.ndarray:
    """Chunk-wise ids of ``prompt`` with the image slots expanded (``docs/benchmarks.md`` 1)."""
    n_marks = prompt.count(templates.IMAGE_TOKEN)
    if n_marks != (1 if has_image else 0):
      raise ValueError(
          f"item {index}: the prompt has {n_marks} {templates.IMAGE_TOKEN} marker(s) but "
          f"{'an image was' if has_image else 'no image was'} given (expected exactly "
          f"{1 if has_image else 0})")
    bos_text = getattr(self.tokenizer, "bos_token", None)  # family templates write their BOS
    ids = templates.tokenize_chunks(self.encoder, prompt,
                                    bos=not (bos_text and prompt.startswith(bos_text)))
    out, _ = templates.expand_image_tokens(ids, ids, self.num_visual_tokens,
                                           self.config.image_token_id)
    return out

  def family_stop_ids(self) -> list:
    """Token sequences of the LLM family's stop tokens (``models/registry.py``)."""
    stops = registry.family(self.config.llm.family).stop_tokens
    return [ids for ids in (self.encoder.encode(s, False) for s in stops) if ids]

  def decode(self, tokens: Sequence[int]) -> str:
    return self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

  def generate(self, items: Sequence[Tuple[Any, str]], *, max_new_tokens: int,
               sampler: sampling.SamplerConfig = sampling.GREEDY, rng=None,
               stop_strings: Sequence[str] = ()) -> list:
    """Answers for ``[(PIL image | None, prompt)]``, in order.

    ``stop_strings`` end an answer on the host: the text is cut before the first one.
    """
    reqs = []
    size = self.config.vision.image_size
    t = tower(self.config.vision.tower)
    for i, (img, prompt) in enumerate(items):
      ids = self.encode(prompt, img is not None, i)
      reqs.append(engine_lib.Request(
          ids.tolist(), None if img is None else prepare_image(img, size, t.image_mean,
                                                               t.image_std)))
    self.engine.batch_size = max(self.engine.batch_size, len(reqs))
    results = self.engine.generate(reqs, max_new_tokens=max_new_tokens, sampler=sampler,
                                   rng=rng, stop_token_ids=self.family_stop_ids())
    texts = []
    for r in results:
      text = self.decode(r.tokens)
      cut = [text.find(s) for s in stop_strings if s and s in text]
      texts.append(text[:min(cut)].strip() if cut else text)
    return texts

  def generate_fn(self, batch, *, max_new_tokens: int) -> list:
    """The evaluation runner's contract: greedy answers for ``[(image, prompt)]``.

    A benchmark's ``max_new_tokens`` is LLaVA's upper bound; on a model whose context cannot
    hold the longest prompt plus that many tokens, answers stop where the context ends (a
    warning says so) instead of failing the whole evaluation. ``generate`` itself refuses
    such requests.
    """
    positions = self.config.llm.max_position_embeddings
    longest = max(len(self.encode(p, img is not None, i)) for i, (img, p) in enumerate(batch))
    room = positions - longest
    if 1 <= room < max_new_tokens:
      logger.warning("a prompt of %d tokens leaves %d of max_new_tokens=%d within the model's %d "
                     "positions; answers stop there", longest, room, max_new_tokens, positions)
      max_new_tokens = room
    return self.generate(batch, max_new_tokens=max_new_tokens)


def local_mesh(shape: Optional[Sequence[int]]):
  """A ``(data, fsdp, tensor)`` mesh over this host's devices (None -> no mesh)."""
  if shape is None:
    return None
  return sharding_lib.make_mesh(tuple(shape), devices=jax.local_devices())


def load_generator(checkpoint, *, mesh_shape: Optional[Sequence[int]] = None,
                   dtype: Optional[str] = None, tokenizer: Optional[str] = None,
                   batch_size: int = 1, bucket_multiple: int = 64) -> Generator:
  """Loads ``checkpoint`` (see ``loading``) onto a local mesh and wraps it in a Generator."""
  mesh = local_mesh(mesh_shape)
  loaded = loading.load_for_inference(checkpoint, mesh=mesh, tokenizer_dir=tokenizer,
                                      dtype=dtype)
  return Generator(loaded, batch_size=batch_size, bucket_multiple=bucket_multiple, mesh=mesh)


def load_generate_fn(checkpoint, **options):
  """Factory for ``evaluate run --engine``: ``generate_fn`` of :func:`load_generator`.

  Each host runs its own copy of the model on its local devices (the runner shards the
  questions over hosts), so any mesh is built from ``jax.local_devices()``.
  """
  return load_generator(checkpoint, **options).generate_fn

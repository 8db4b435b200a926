"""LLaVA-1.5 conversation templates, label masking and ``<image>`` expansion.

Spec: ``docs/method.md`` 2.4 (templates ``plain`` and ``vicuna_v1``; the LLM families'
``llama3``, ``chatml``, ``mistral_instruct`` and ``gemma`` are in ``chat_templates.py``), 2.5 (label masking),
2.6 (chunk-wise tokenisation around ``<image>``, expansion, truncation after splicing) and
``docs/benchmarks.md`` section 1 (the generation prompt).

Pipeline for one sample (:func:`tokenize_conversation`):

1. :func:`normalize_turns` validates the turns the way LLaVA's ``preprocess_multimodal`` /
   ``preprocess`` would use them (leading non-human turn dropped, ``<image>`` moved to the front
   of its message followed by ``"\\n"``), raising :class:`SampleError` with a reason for bad data.
2. :func:`build_prompt` renders the template and returns the character spans that are
   supervised: each answer plus its ``</s>`` (vicuna_v1; the span starts right after
   ``"ASSISTANT:"``, so the separating space belongs to the answer as in LLaVA), or the caption
   plus ``"\\n"`` (plain).
3. :func:`tokenize_prompt` tokenises chunk-wise around ``<image>`` (one BOS, one placeholder per
   image) and turns the spans into token labels by tokenising the prompt prefixes that end at the
   span boundaries (both boundaries are word or special-token boundaries, so each prefix's ids
   must be a prefix of the full ids; otherwise the sample is a ``tokenization_mismatch``).
4. :func:`expand_image_tokens` replaces the placeholder by ``num_visual_tokens`` copies of
   ``image_token_id`` (label -100), then the result is truncated to ``max_length``.
"""
from __future__ import annotations

import dataclasses
from typing import List, Mapping, Sequence, Tuple

import numpy as np

from acformer_jax.data import chat_templates

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = -200  # LLaVA's IMAGE_TOKEN_INDEX sentinel (never embedded)
IMAGE_TOKEN = "<image>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
VICUNA_ROLES = ("USER", "ASSISTANT")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
TEMPLATES = ("plain", "vicuna_v1") + tuple(chat_templates.CHAT_TEMPLATES)
_TEMPLATE_ALIASES = {"v1": "vicuna_v1", "vicuna_v1": "vicuna_v1", "plain": "plain", "qwen": "chatml",
                     **{n: n for n in chat_templates.CHAT_TEMPLATES}}
_ROLES = ("human", "gpt")


class SampleError(ValueError):
  """A sample that must be skipped; ``reason`` is the skip-counter key."""

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason


def canonical_template(name: str) -> str:
  if name not in _TEMPLATE_ALIASES:
    raise ValueError(f"unknown conversation template {name!r}; expected one of {TEMPLATES}")
  return _TEMPLATE_ALIASES[name]


def normalize_turns(conversations: Sequence[Mapping[str, str]], *, has_image: bool,
                    template: str) -> List[Tuple[str, str]]:
  """Validates a LLaVA ``conversations`` list; returns ``[(role, text), ...]`` (docs/method.md 2.4-2.6).

  Raises:
    SampleError: reasons ``bad_record``, ``bad_roles``, ``empty_answer``,
      ``missing_image_token``, ``unexpected_image_token``, ``multiple_image_tokens``,
      ``misplaced_image_token``.
  """
  template = canonical_template(template)
  turns = []
  if not isinstance(conversations, (list, tuple)):
    raise SampleError("bad_record", f"conversations must be a list, got {type(conversations).__name__}")
  for i, msg in enumerate(conversations):
    if not isinstance(msg, Mapping) or not isinstance(msg.get("value"), str) or "from" not in msg:
      raise SampleError("bad_record", f"turn {i} needs string fields 'from' and 'value', got {msg!r:.80}")
    turns.append((msg["from"], msg["value"]))
  if has_image:
    with_image = [i for i, (_, v) in enumerate(turns) if IMAGE_TOKEN in v]
    if len(with_image) > 1:
      raise SampleError("multiple_image_tokens", f"<image> appears in turns {with_image}")
    for i in with_image:  # LLaVA preprocess_multimodal: move <image> to the front + "\n"
      role, v = turns[i]
      turns[i] = (role, (IMAGE_TOKEN + "\n" + v.replace(IMAGE_TOKEN, "").strip()).strip())
  elif any(IMAGE_TOKEN in v for _, v in turns):
    raise SampleError("unexpected_image_token", "text-only sample (no image) contains <image>")
  if template == "plain":
    if not has_image:
      raise SampleError("missing_image_token", "the plain template needs an image sample")
    if len(turns) != 2 or turns[0][0] != "human" or turns[1][0] != "gpt":
      raise SampleError("bad_roles", "the plain template needs exactly [human, gpt]")
  elif turns and turns[0][0] != "human":
    turns = turns[1:]  # LLaVA drops a leading non-human turn
  if not turns or len(turns) % 2:
    raise SampleError("bad_roles", f"expected alternating human/gpt turns ending with gpt, got {len(turns)} turns")
  for i, (role, value) in enumerate(turns):
    if role != _ROLES[i % 2]:
      raise SampleError("bad_roles", f"turn {i} is from {role!r}, expected {_ROLES[i % 2]!r}")
    if role == "gpt" and not value.strip():
      raise SampleError("empty_answer", f"turn {i} (gpt) is empty")
  if has_image:
    if not any(IMAGE_TOKEN in v for _, v in turns):
      raise SampleError("missing_image_token", "image sample has no <image> in its conversation")
    if any(IMAGE_TOKEN in v for r, v in turns if r == "gpt"):
      raise SampleError("misplaced_image_token", "<image> must be in a human turn")
  return turns


def build_prompt(turns: Sequence[Tuple[str, str]], template: str) -> Tuple[str, List[Tuple[int, int]]]:
  """Renders validated turns; returns ``(prompt, supervised character spans)`` (docs/method.md 2.4, 2.5)."""
  template = canonical_template(template)
  if template in chat_templates.CHAT_TEMPLATES:
    return chat_templates.render(turns, template)
  if template == "plain":
    prompt = IMAGE_TOKEN + turns[1][1] + "\n"
    return prompt, [(len(IMAGE_TOKEN), len(prompt))]
  parts, spans, pos = [VICUNA_SYSTEM + " "], [], len(VICUNA_SYSTEM) + 1
  for i, (_, value) in enumerate(turns):
    if i % 2 == 0:
      piece = f"{VICUNA_ROLES[0]}: {value} "
    else:
      head = f"{VICUNA_ROLES[1]}:"
      piece = f"{head} {value}</s>"
      spans.append((pos + len(head), pos + len(piece)))
    parts.append(piece)
    pos += len(piece)
  return "".join(parts), spans


def generation_prompt(question: str, *, has_image: bool = True, template: str = "vicuna_v1") -> str:
  """Inference prompt (``docs/benchmarks.md`` 1): ends with ``"ASSISTANT:"``, no trailing space."""
  template = canonical_template(template)
  user = (IMAGE_TOKEN + "\n" + question) if has_image else question
  if template == "plain":
    return IMAGE_TOKEN if has_image else question
  if template in chat_templates.CHAT_TEMPLATES:
    return chat_templates.generation_prompt(user, template)
  return f"{VICUNA_SYSTEM} {VICUNA_ROLES[0]}: {user} {VICUNA_ROLES[1]}:"


def adds_bos(template: str) -> bool:
  """Whether the encoder's BOS is prepended (the family chat templates write theirs out)."""
  return canonical_template(template) not in chat_templates.CHAT_TEMPLATES


def tokenize_chunks(encoder, text: str, bos: bool = True) -> List[int]:
  """LLaVA's ``tokenizer_image_token``: one BOS, chunks joined by :data:`IMAGE_PLACEHOLDER`."""
  ids = [encoder.bos_id] if bos and encoder.bos_id is not None else []
  for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
    if i:
      ids.append(IMAGE_PLACEHOLDER)
    ids.extend(encoder.encode(chunk, False))
  return ids


def tokenize_prompt(encoder, prompt: str, spans: Sequence[Tuple[int, int]], bos: bool = True,
                    unmask: Sequence[int] = ()) -> Tuple[List[int], List[int]]:
  """Chunk-wise ids of ``prompt`` and labels that keep only the tokens of ``spans`` (and
  every token whose id is in ``unmask``)."""
  ids = tokenize_chunks(encoder, prompt, bos)
  labels = [IGNORE_INDEX] * len(ids)
  cache = {len(prompt): len(ids)}

  def boundary(c: int) -> int:
    if c not in cache:
      prefix = tokenize_chunks(encoder, prompt[:c], bos)
      if ids[:len(prefix)] != prefix:
        raise SampleError("tokenization_mismatch",
                          f"tokens of the prompt prefix ending at char {c} are not a prefix of the full ids")
      cache[c] = len(prefix)
    return cache[c]

  for start, end in spans:
    a, b = boundary(start), boundary(end)
    labels[a:b] = ids[a:b]
  keep = set(unmask)
  labels = [t if t in keep else l for t, l in zip(ids, labels)]
  return ids, labels


def expand_image_tokens(ids: Sequence[int], labels: Sequence[int], num_visual_tokens: int,
                        image_token_id: int) -> Tuple[np.ndarray, np.ndarray]:
  """Replaces each placeholder by ``num_visual_tokens`` image ids (label -100), docs/method.md 2.6."""
  ids, labels = np.asarray(ids, np.int32), np.asarray(labels, np.int32)
  where = np.flatnonzero(ids == IMAGE_PLACEHOLDER)
  if where.size == 0:
    return ids, labels
  reps = np.where(ids == IMAGE_PLACEHOLDER, num_visual_tokens, 1)
  out_ids = np.repeat(ids, reps)
  out_labels = np.repeat(labels, reps)
  out_ids[out_ids == IMAGE_PLACEHOLDER] = image_token_id
  out_labels[np.repeat(ids == IMAGE_PLACEHOLDER, reps)] = IGNORE_INDEX
  return out_ids, out_labels


@dataclasses.dataclass
class TokenizedSample:
  input_ids: np.ndarray  # int32 [L], L <= max_length, image slots = image_token_id
  labels: np.ndarray     # int32 [L], IGNORE_INDEX where not supervised
  truncated: bool


def tokenize_conversation(conversations, *, has_image: bool, template: str, encoder,
                          num_visual_tokens: int, image_token_id: int, max_length: int,
                          overlong: str = "truncate") -> TokenizedSample:
  """One LLaVA sample -> expanded, truncated ids and labels (docs/method.md 2.4-2.6).

  Args:
    overlong: ``"truncate"`` (LLaVA: cut after splicing) or ``"skip"`` (reason ``too_long``).
      A sample left without any supervised token is skipped (``no_supervised_tokens``).
  """
  if overlong not in ("truncate", "skip"):
    raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
  turns = normalize_turns(conversations, has_image=has_image, template=template)
  prompt, spans = build_prompt(turns, template)
  name = canonical_template(template)
  unmask = chat_templates.unmask_ids(encoder, name) if name in chat_templates.CHAT_TEMPLATES else ()
  ids, labels = tokenize_prompt(encoder, prompt, spans, adds_bos(name), unmask)
  ids, labels = expand_image_tokens(ids, labels, num_visual_tokens, image_token_id)
  truncated = len(ids) > max_length
  if truncated:
    if overlong == "skip":
      raise SampleError("too_long", f"{len(ids)} tokens after image expansion > max_length {max_length}")
    ids, labels = ids[:max_length], labels[:max_length]
  if not np.any(labels != IGNORE_INDEX):
    raise SampleError("no_supervised_tokens", "no answer token is left (after truncation)")
  return TokenizedSample(ids, labels, truncated)


def encode_generation_prompt(encoder, question: str, *, has_image: bool, num_visual_tokens: int,
                             image_token_id: int, template: str = "vicuna_v1") -> np.ndarray:
  """Ids of :func:`generation_prompt` with the image slots expanded (for inference)."""
  ids = tokenize_chunks(encoder, generation_prompt(question, has_image=has_image, template=template),
                        adds_bos(template))
  out, _ = expand_image_tokens(ids, ids, num_visual_tokens, image_token_id)
  return out

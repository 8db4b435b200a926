"""A documented, LLaVA-like length profile of the two training mixtures (ASSUMPTIONS).

Used by ``bench packing`` and to choose the recipes' ``data.max_images_per_row``. No dataset
is read: every number below is an estimate from the datasets' public descriptions (the
LLaVA-1.5 paper's mixture table, the LLaVA-Instruct-158K and ShareGPT descriptions, the
source VQA datasets' question styles) and LLaMA-tokenizer rules of thumb (~1.3 tokens per
English word). They are stated as assumptions; change them here and every consumer follows.

A component: ``share`` (thousands of samples), whether samples carry an image, the mean
number of turns, and mean tokens per turn for the user prompt and the answer. Per sample:
``turns = 1 + Poisson(turns - 1)``, every prompt/answer length lognormal around its mean
(``sigma`` = :data:`SIGMA`), plus the template's fixed tokens (``vicuna_v1``: BOS and the
~30-token system prompt, ~8 tokens of roles per turn; ``plain``: BOS and a newline). The
LLM length of a sample = text tokens + the connector's ``Nv`` visual tokens if it has an
image, truncated to the row length (as LLaVA truncates at 2048).

LCS-558K (stage 1): one BLIP caption per image (a short sentence, ~15 words); the ``plain``
template drops the instruction, so the text is BOS + caption + newline.

LLaVA-665K (``llava_v1_5_mix665k``, stage 2), shares from the LLaVA-1.5 paper:

=================  =====  =====  =====  ======  ======  =========================================
component          K      image  turns  prompt  answer  basis (assumption)
=================  =====  =====  =====  ======  ======  =========================================
llava_conv         58     yes    3      15      60      multi-turn chats about one image
llava_detail       23     yes    1      12      120     one "describe in detail" paragraph
llava_reasoning    77     yes    1      20      110     one question, reasoned answer
sharegpt           40     no     3      80      220     long user chats (text-only)
vqav2              83     yes    5      20      3       several short questions per image, merged;
                                                        "answer with a single word or phrase"
gqa                72     yes    6      22      3       as vqav2
okvqa              9      yes    1      22      3       as vqav2, one question
ocrvqa             80     yes    5      20      6       book-cover questions (titles, authors)
aokvqa             66     yes    1      50      2       multiple choice: question + 4 options
textcaps           22     yes    1      15      20      "provide a one-sentence caption"
refcoco            48     yes    4      25      10      region <-> description, coordinates
vg                 86     yes    5      25      12      region descriptions, coordinates
=================  =====  =====  =====  ======  ======  =========================================
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

SIGMA = 0.5            # lognormal spread of every prompt/answer length
VICUNA_FIXED = 32      # BOS + system prompt
VICUNA_PER_TURN = 8    # "USER: ", " ASSISTANT:", "</s>"
PLAIN_FIXED = 2        # BOS + newline


@dataclasses.dataclass(frozen=True)
class Component:
  name: str
  share_k: float         # thousands of samples in the mixture
  has_image: bool
  turns: float           # mean turns (>= 1)
  prompt_tokens: float   # mean user tokens per turn (image placeholder excluded)
  answer_tokens: float   # mean assistant tokens per turn
  fixed_tokens: int = VICUNA_FIXED
  per_turn_tokens: int = VICUNA_PER_TURN


LCS_558K = (Component("blip_caption", 558, True, 1, 0, 20, PLAIN_FIXED, 0),)
LLAVA_665K = (
    Component("llava_conv", 58, True, 3, 15, 60),
    Component("llava_detail", 23, True, 1, 12, 120),
    Component("llava_reasoning", 77, True, 1, 20, 110),
    Component("sharegpt", 40, False, 3, 80, 220),
    Component("vqav2", 83, True, 5, 20, 3),
    Component("gqa", 72, True, 6, 22, 3),
    Component("okvqa", 9, True, 1, 22, 3),
    Component("ocrvqa", 80, True, 5, 20, 6),
    Component("aokvqa", 66, True, 1, 50, 2),
    Component("textcaps", 22, True, 1, 15, 20),
    Component("refcoco", 48, True, 4, 25, 10),
    Component("vg", 86, True, 5, 25, 12),
)
PROFILES: Dict[int, Tuple[Component, ...]] = {1: LCS_558K, 2: LLAVA_665K}


def mean_text_tokens(profile: Sequence[Component], text_scale: float = 1.0) -> float:
  """Expected text tokens per sample (before truncation)."""
  total = sum(c.share_k for c in profile)
  return sum(c.share_k / total * (c.fixed_tokens + c.turns * (
      c.per_turn_tokens + text_scale * (c.prompt_tokens + c.answer_tokens))) for c in profile)


def image_share(profile: Sequence[Component]) -> float:
  total = sum(c.share_k for c in profile)
  return sum(c.share_k for c in profile if c.has_image) / total


def _lognormal(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
  if mean <= 0:
    return np.zeros(n)
  return rng.lognormal(np.log(mean) - SIGMA ** 2 / 2, SIGMA, n)  # E[x] = mean


def sample_texts(profile: Sequence[Component], n: int, seed: int = 0,
                 text_scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
  """``(text_tokens int [n], has_image bool [n])`` of ``n`` samples drawn from the mixture,
  in a shuffled order. ``text_scale`` multiplies every prompt/answer length (the sweep)."""
  rng = np.random.default_rng(seed)
  shares = np.array([c.share_k for c in profile], float)
  which = rng.choice(len(profile), size=n, p=shares / shares.sum())
  text = np.zeros(n)
  has_image = np.zeros(n, bool)
  for i, c in enumerate(profile):
    idx = np.flatnonzero(which == i)
    k = len(idx)
    if not k:
      continue
    turns = 1 + rng.poisson(max(c.turns - 1, 0), k)
    t = c.fixed_tokens + turns * c.per_turn_tokens
    for j in range(int(turns.max())):
      live = turns > j
      t = t + live * text_scale * (_lognormal(rng, c.prompt_tokens, k) + _lognormal(rng, c.answer_tokens, k))
    text[idx] = t
    has_image[idx] = c.has_image
  return np.maximum(np.rint(text), 2).astype(np.int64), has_image


def llm_lengths(text: np.ndarray, has_image: np.ndarray, nv: int, max_length: int) -> np.ndarray:
  """True LLM lengths (text + ``nv`` visual tokens with an image), truncated to the row."""
  return np.minimum(text + has_image * nv, max_length)


def pack_stats(lengths: np.ndarray, has_image: np.ndarray, *, rows: int, max_length: int,
               max_images: int, lookahead: int = 64) -> Dict[str, float]:
  """Packs the samples (``data/packing.pack_batch``, batches of ``rows``) and returns the
  mean samples per row, real tokens / slots and real images / image slots."""
  from acformer_jax.data import packing  # pylint: disable=import-outside-toplevel
  spec = packing.PackSpec(max_length, max_images, lookahead)
  stream = iter([{"input_ids": range(int(n)), "image": True if im else None}
                 for n, im in zip(lengths, has_image)])
  carried: List = []
  n_rows = samples = tokens = images = 0
  while True:
    got, carried, exhausted = packing.pack_batch(carried, stream, rows, spec)
    if exhausted:
      break  # the last, partial batch is not representative
    n_rows += rows
    for row in got:
      samples += len(row)
      tokens += sum(len(s["input_ids"]) for s in row)
      images += sum(s["image"] is not None for s in row)
  if not n_rows:
    raise ValueError(f"{len(lengths)} samples do not fill one batch of {rows} rows")
  return {"samples_per_row": samples / n_rows, "token_efficiency": tokens / (n_rows * max_length),
          "image_efficiency": images / (n_rows * max_images), "rows": n_rows}


def choose_images_per_row(mc, stage: int, *, max_length: int = 2048, rows: int = 32,
                          samples: int = 6000, seed: int = 0) -> Tuple[int, Dict[str, float]]:
  """``(M, pack_stats)``: the image slots per row that maximise real samples per PADDED FLOP
  (``trainer/flops.train_step_flops``: every image slot is encoded, used or not) for model
  ``mc`` on stage ``stage``'s profile. More slots pack more samples until the row's tokens
  run out; past that, every slot only adds ViT and connector work."""
  from acformer_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import flops as flops_lib  # pylint: disable=import-outside-toplevel
  text, has_image = sample_texts(PROFILES[stage], samples, seed)
  lengths = llm_lengths(text, has_image, config_lib.num_visual_tokens(mc), max_length)
  best = None
  for m in range(1, 65):
    st = pack_stats(lengths, has_image, rows=rows, max_length=max_length, max_images=m)
    pad = flops_lib.train_step_flops(mc, 1, max_length, llm_trainable=stage == 2,
                                     images_per_row=m).total
    score = st["samples_per_row"] / pad
    if best is None or score > best[0]:
      best = (score, m, st)
    elif st["image_efficiency"] < 0.5:
      break
  return best[1], best[2]

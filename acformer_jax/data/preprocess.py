"""LLaVA-1.5 image preprocessing (CLIP), NHWC float32.

Spec: ``docs/method.md`` 2.7 and ``docs/benchmarks.md`` section 1: convert to RGB, optionally pad to a square
canvas filled with the CLIP mean colour ``(122, 116, 104)`` (original pasted centred), resize the
short side to ``image_size`` with PIL bicubic (long side ``int(size * long / short)``), centre crop
``image_size`` (offset ``(extent - size) // 2``), rescale by 1/255 and normalise with CLIP's
mean/std. Equals transformers' ``CLIPImageProcessor`` (PIL backend) on the padded RGB image.
"""
from __future__ import annotations

import io
from typing import Union

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = tuple(int(m * 255) for m in CLIP_MEAN)  # (122, 116, 104)


def decode_image(data: Union[bytes, str, "Image.Image"]) -> Image.Image:
  """Opens encoded bytes (or a path / PIL image) fully decoded as RGB (raises on corrupt data)."""
  img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
  img.load()
  return img.convert("RGB")


def expand_to_square(img: Image.Image, fill=PAD_COLOR) -> Image.Image:
  """LLaVA's ``expand2square``: centre the image on a square canvas of ``fill``."""
  w, h = img.size
  if w == h:
    return img
  side = max(w, h)
  canvas = Image.new(img.mode, (side, side), fill)
  canvas.paste(img, ((side - w) // 2, (side - h) // 2))
  return canvas


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
  """Short side -> ``size`` (bicubic), then centre crop ``size`` x ``size``."""
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
  top, left = (new_h - size) // 2, (new_w - size) // 2  # >= 0: the long side is >= size
  return img.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 HWC -> normalised float32 HWC (CLIP's mean/std unless the tower has others)."""
  x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_image(data, image_size: int, *, pad_to_square: bool, mean=CLIP_MEAN,
                     std=CLIP_STD) -> np.ndarray:
  """Encoded bytes / path / PIL image -> float32 ``[S, S, 3]`` (docs/method.md 2.7); ``mean`` /
  ``std``: the tower's (``models/towers.py``), also the pad colour."""
  img = decode_image(data)
  if pad_to_square:
    img = expand_to_square(img, tuple(int(m * 255) for m in mean))
  img = resize_and_crop(img, image_size)
  return normalize(np.asarray(img, dtype=np.uint8), mean, std)

"""Image preprocessing vs transformers' CLIPImageProcessor (PIL backend) on real photos."""
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image
from transformers import CLIPImageProcessorPil

from acformer_jax.data import preprocess as P

PHOTOS = ("astronaut", "chelsea", "rocket", "camera")  # square, landscape, large, grey


def _ref_pad(img):
  """LLaVA expand2square written from docs/method.md 2.7 (independent of the package)."""
  w, h = img.size
  side = max(w, h)
  out = np.zeros((side, side, 3), np.uint8)
  out[:] = (122, 116, 104)
  arr = np.asarray(img)
  y, x = (side - h) // 2, (side - w) // 2
  out[y:y + h, x:x + w] = arr
  return Image.fromarray(out)


@pytest.mark.parametrize("size", [336, 56])
@pytest.mark.parametrize("pad", [False, True])
def test_matches_clip_image_processor(size, pad):
  hf = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
  for name in PHOTOS:
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    src = img
    if name == "chelsea":  # also exercise the encoded-bytes path
      buf = io.BytesIO()
      img.save(buf, format="PNG")
      src = buf.getvalue()
    ours = P.preprocess_image(src, size, pad_to_square=pad)
    ref = hf(_ref_pad(img) if pad else img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0, err_msg=f"{name} size={size} pad={pad}")


def test_pad_colour_and_placement():
  img = Image.new("RGB", (40, 20), (255, 0, 0))
  sq = np.asarray(P.expand_to_square(img))
  assert sq.shape == (40, 40, 3)
  assert (sq[:10] == (122, 116, 104)).all() and (sq[30:] == (122, 116, 104)).all()
  assert (sq[10:30] == (255, 0, 0)).all()
  # A padded red image keeps the CLIP-normalised mean colour in the margins.
  x = P.preprocess_image(img, 20, pad_to_square=True)
  np.testing.assert_allclose(x[0, 10], (np.array([122, 116, 104]) / 255 - P.CLIP_MEAN) / P.CLIP_STD, atol=1e-5)


def test_grey_and_rgba_become_rgb():
  grey = Image.fromarray(skimage.data.camera())
  rgba = Image.fromarray(skimage.data.horse().astype(np.uint8) * 255).convert("RGBA")
  for img in (grey, rgba):
    assert P.preprocess_image(img, 28, pad_to_square=True).shape == (28, 28, 3)


def test_corrupt_bytes_raise():
  with pytest.raises(Exception):
    P.preprocess_image(b"\x89PNG\r\n\x1a\nnot really", 28, pad_to_square=False)

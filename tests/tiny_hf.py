"""Tiny random transformers models (torch references) and the checkpoint layouts we read.

Weights are re-drawn with a larger scale than HF's init (std 0.02) so attention is far
from uniform and a wrong transpose or head order changes the outputs visibly.
"""
import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import torch
import transformers


def random_params(abstract_variables, seed: int, std: float = 0.2):
  """Random float32 params for an ``eval_shape(module.init, ...)`` result, drawn with
  numpy (compiling ``module.init`` costs seconds on CPU, mostly PRNG kernels)."""
  rng = np.random.default_rng(seed)
  tree = nn.unbox(abstract_variables)
  return jax.tree.map(lambda a: (std * rng.standard_normal(a.shape)).astype(np.float32), tree)


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      is_norm = p.ndim == 1 and ("norm" in name or "layrnorm" in name)
      if is_norm and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(std * noise)
  return model.eval()


def tiny_clip_vision(seed=0, image_size=56, hidden=32, layers=2, heads=4, inter=64):
  cfg = transformers.CLIPVisionConfig(
      hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
      num_attention_heads=heads, image_size=image_size, patch_size=14)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  return randomize_(transformers.CLIPVisionModel(cfg), seed)


def tiny_llama(seed=0, std=0.15, **overrides):
  kw = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5)
  kw.update(overrides)
  cfg = transformers.LlamaConfig(**kw)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  return randomize_(transformers.LlamaForCausalLM(cfg), seed, std)


def save(model, directory, fmt: str = "safetensors") -> pathlib.Path:
  """Writes ``model`` as ``safetensors`` | ``sharded`` (safetensors + index) | ``bin``
  (``pytorch_model.bin``) | ``sharded_bin`` (two ``.bin`` shards + index)."""
  d = pathlib.Path(directory)
  if fmt == "safetensors":
    model.save_pretrained(d)
  elif fmt == "sharded":
    model.save_pretrained(d, max_shard_size="8KB")
    assert (d / "model.safetensors.index.json").is_file()
  elif fmt in ("bin", "sharded_bin"):
    model.config.save_pretrained(d)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "bin":
      torch.save(state, d / "pytorch_model.bin")
    else:
      keys = sorted(state)
      shards = {"pytorch_model-00001-of-00002.bin": keys[::2],
                "pytorch_model-00002-of-00002.bin": keys[1::2]}
      weight_map = {}
      for name, ks in shards.items():
        torch.save({k: state[k] for k in ks}, d / name)
        weight_map.update({k: name for k in ks})
      (d / "pytorch_model.bin.index.json").write_text(
          json.dumps({"metadata": {}, "weight_map": weight_map}))
  else:
    raise ValueError(fmt)
  return d

"""Tiny random PyTorch checkpoints in every input format of ``acformer_jax.convert``.

Torch modules are real transformers models (CLIPVisionModel, LlamaForCausalLM,
LlavaForConditionalGeneration) or, for the official AcFormer projector, the independent
torch reference in ``tests/models/torch_reference.py``; weights are re-drawn with a
large scale (``tiny_hf.randomize_``) so transposes and head orders matter.
"""
import importlib.util
import json
import pathlib

import safetensors.torch
import torch
import transformers

import tiny_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=56, patch_size=14)        # 16 patches, 2 of 3 blocks computed
TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, rope_theta=10000.0)
ACFORMER = dict(acformer_num_queries=8, acformer_resampler_heads=2,
                acformer_resampler_dim_head=8, acformer_resampler_ff_mult=2)
RESAMPLER_DEPTH = 2
LLAVA_FIELDS = dict(mm_hidden_size=32, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                    mm_use_im_start_end=False, mm_use_im_patch_token=False,
                    image_aspect_ratio="pad", tokenizer_model_max_length=2048,
                    mm_vision_tower="openai/clip-vit-large-patch14-336")


def torch_reference():
  """helper-2's PyTorch AcFormer reference (``tests/models/torch_reference.py``)."""
  spec = importlib.util.spec_from_file_location("torch_reference_conv",
                                                ROOT / "models" / "torch_reference.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def clip(directory, seed=1):
  cfg = transformers.CLIPVisionConfig(**VISION)
  torch.manual_seed(seed)
  model = tiny_hf.randomize_(transformers.CLIPVisionModel(cfg), seed)
  model.save_pretrained(directory)
  return model


def llama(directory=None, seed=2, **overrides):
  cfg = transformers.LlamaConfig(**dict(TEXT, **overrides))
  torch.manual_seed(seed)
  model = tiny_hf.randomize_(transformers.LlamaForCausalLM(cfg), seed, std=0.15)
  if directory is not None:
    model.save_pretrained(directory)
  return model


def hf_llava(directory, layout="transformers5", seed=3, vocab=96, image_id=94, shard=None):
  """A LlavaForConditionalGeneration directory; ``layout`` renames the saved keys.

  ``vocab`` rows include the converter's added ``<image>`` (``image_id``) and ``<pad>``
  (``image_id + 1``) rows, as llava-hf ships them (docs/method.md 2.9).
  """
  cfg = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(**VISION),
      text_config=transformers.LlamaConfig(**dict(TEXT, vocab_size=vocab,
                                                  pad_token_id=image_id + 1)),
      image_token_index=image_id, image_seq_length=16, vision_feature_layer=-2,
      vision_feature_select_strategy="default", projector_hidden_act="gelu")
  torch.manual_seed(seed)
  model = tiny_hf.randomize_(transformers.LlavaForConditionalGeneration(cfg), seed, std=0.15)
  directory = pathlib.Path(directory)
  model.save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
  if layout != "transformers5":
    rename = {"legacy": _to_legacy, "current": _to_current}[layout]
    files = sorted(directory.glob("*.safetensors"))
    for f in files:
      state = safetensors.torch.load_file(f)
      safetensors.torch.save_file({rename(k): v for k, v in state.items()}, f,
                                  metadata={"format": "pt"})
    index = directory / "model.safetensors.index.json"
    if index.is_file():
      d = json.loads(index.read_text())
      d["weight_map"] = {rename(k): v for k, v in d["weight_map"].items()}
      index.write_text(json.dumps(d))
  return model


def _to_legacy(k):
  if k.startswith("vision_tower."):
    return "vision_tower.vision_model." + k[len("vision_tower."):]
  return k


def _to_current(k):
  if k.startswith("language_model.model."):
    return "model.language_model." + k[len("language_model.model."):]
  if k == "language_model.lm_head.weight":
    return "lm_head.weight"
  if k.startswith("vision_tower."):
    return "model.vision_tower.vision_model." + k[len("vision_tower."):]
  return "model." + k


def _projector_state(kind, seed):
  g = torch.Generator().manual_seed(seed)
  d_v, d_l = VISION["hidden_size"], TEXT["hidden_size"]
  if kind == "acformer":
    proj = torch_reference().acformer_projector(
        d_v, d_l, depth=RESAMPLER_DEPTH, heads=ACFORMER["acformer_resampler_heads"],
        dim_head=ACFORMER["acformer_resampler_dim_head"],
        ff_mult=ACFORMER["acformer_resampler_ff_mult"])
    tiny_hf.randomize_(proj, seed, std=0.2)
    return {f"model.mm_projector.{k}": v.detach().clone() for k, v in proj.state_dict().items()}
  shapes = {"linear": {"": (d_l, d_v)}, "mlp2x_gelu": {".0": (d_l, d_v), ".2": (d_l, d_l)}}[kind]
  out = {}
  for suffix, shape in shapes.items():
    out[f"model.mm_projector{suffix}.weight"] = 0.2 * torch.randn(shape, generator=g)
    out[f"model.mm_projector{suffix}.bias"] = 0.1 * torch.randn(shape[0], generator=g)
  return out


def original(directory, kind="mlp2x_gelu", seed=4, dtype=torch.float16, as_bin=True):
  """An original LLaVA-1.5 / AcFormer directory (LLM + mm_projector, no vision tower),
  stored like the releases: float16 ``pytorch_model-*.bin`` shards + index."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True)
  lm = llama(seed=seed)
  state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
  state.update(_projector_state(kind, seed + 1))
  state = {k: v.to(dtype).contiguous() for k, v in state.items()}
  state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old buffers: skipped
  cfg = dict(lm.config.to_dict(), architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama",
             torch_dtype=str(dtype).replace("torch.", ""), **LLAVA_FIELDS)
  cfg.pop("dtype", None)
  cfg["mm_projector_type"] = "linear" if kind == "linear" else "mlp2x_gelu"
  if kind == "acformer":
    cfg.update(ACFORMER)
  (directory / "config.json").write_text(json.dumps(cfg))
  if as_bin:
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2],
              "pytorch_model-00002-of-00002.bin": keys[1::2]}
    weight_map = {}
    for name, ks in shards.items():
      torch.save({k: state[k] for k in ks}, directory / name)
      weight_map.update({k: name for k in ks})
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
  else:
    safetensors.torch.save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
  return state


def stage1(directory, kind="acformer", seed=6):
  """A LLaVA stage-1 output: ``mm_projector.bin`` (+ its ``config.json``)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True)
  state = _projector_state(kind, seed)
  torch.save(state, directory / "mm_projector.bin")
  cfg = dict(LLAVA_FIELDS, mm_projector_type="mlp2x_gelu" if kind != "linear" else "linear")
  if kind == "acformer":
    cfg.update(ACFORMER)
  (directory / "config.json").write_text(json.dumps(cfg))
  return state


def files_state(directory):
  """Every tensor of a saved directory (safetensors or .bin, sharded or not)."""
  directory = pathlib.Path(directory)
  out = {}
  for f in sorted(directory.glob("*.safetensors")):
    out.update(safetensors.torch.load_file(f))
  for f in sorted(directory.glob("*.bin")):
    out.update(torch.load(f, weights_only=True))
  return out

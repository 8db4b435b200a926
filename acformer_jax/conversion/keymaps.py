"""Key maps of the CLIP vision tower and the LLaMA decoder (spec ``acformer.md`` 2.9).

The generic machinery lives in :mod:`acformer_jax.keymap` (re-exported here); LLM
families declare their maps in ``models/families/`` (``registry.family(name).keymap``).
"""
from __future__ import annotations

from acformer_jax.config import LLMConfig
from acformer_jax.models.families import decoder_hf
from acformer_jax.keymap import (CONV2D, IDENTITY, LINEAR, ConversionError, Entry, KeyMap,  # noqa: F401
                                 LayerStack, Permute, Rule, flatten_paths, unflatten_paths)


# --- CLIPVisionModel (spec 3.2, 2.9) ---------------------------------------------------
CLIP_VISION_RULES = (
    Rule("embeddings.patch_embedding.weight", "embeddings/patch_embedding/kernel", CONV2D),
    Rule("embeddings.class_embedding", "embeddings/class_embedding"),
    Rule("embeddings.position_embedding.weight", "embeddings/position_embedding"),
    Rule("pre_layrnorm.weight", "pre_layrnorm/scale"),
    Rule("pre_layrnorm.bias", "pre_layrnorm/bias"),
    Rule("post_layernorm.weight", "post_layernorm/scale"),
    Rule("post_layernorm.bias", "post_layernorm/bias"),
)
CLIP_VISION_LAYER_RULES = tuple(
    [Rule(f"encoder.layers.{{i}}.{ln}.{w}", f"{ln}/{o}")
     for ln in ("layer_norm1", "layer_norm2") for w, o in (("weight", "scale"), ("bias", "bias"))]
    + [Rule(f"encoder.layers.{{i}}.{mod}.weight", f"{mod.replace('.', '/')}/kernel", LINEAR)
       for mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.out_proj", "mlp.fc1", "mlp.fc2")]
    + [Rule(f"encoder.layers.{{i}}.{mod}.bias", f"{mod.replace('.', '/')}/bias")
       for mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.out_proj", "mlp.fc1", "mlp.fc2")])
CLIP_VISION_IGNORE = (r"embeddings\.position_ids",)


def clip_vision_keymap(num_layers: int, num_computed_layers: int) -> KeyMap:
  """CLIPVisionModel keys (transformers >= 5 spelling, no ``vision_model.`` prefix).

  HF blocks ``0..n-1`` go to ``layers``, the rest to ``unused_layers`` (docs/design.md).
  """
  n = num_computed_layers
  stacks = [LayerStack("layers", 0, n)]
  if num_layers > n:
    stacks.append(LayerStack("unused_layers", n, num_layers - n))
  return KeyMap.build(CLIP_VISION_RULES, CLIP_VISION_LAYER_RULES, stacks, CLIP_VISION_IGNORE)


# --- LlamaForCausalLM (spec 3.1, 2.9) --------------------------------------------------
def llama_keymap(num_layers: int, tie_word_embeddings: bool) -> KeyMap:
  """LlamaForCausalLM keys (the ``llama`` family's map, ``models/families/decoder_hf.py``)."""
  return decoder_hf.keymap(LLMConfig(num_layers=num_layers, tie_word_embeddings=tie_word_embeddings))

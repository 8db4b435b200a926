"""Key maps of the CLIP vision tower and the LLaMA decoder (spec ``docs/method.md`` 2.9).

The generic machinery lives in :mod:`acformer_jax.keymap` (re-exported here); LLM
families declare their maps in ``models/families/`` (``registry.family(name).keymap``),
vision towers in their own files (the CLIP map in ``models/vit.py``, re-exported here).
"""
from __future__ import annotations

from acformer_jax.config import LLMConfig
from acformer_jax.models.families import decoder_hf
from acformer_jax.models.vit import (CLIP_VISION_IGNORE, CLIP_VISION_LAYER_RULES,  # noqa: F401
                                    CLIP_VISION_RULES, clip_vision_keymap)
from acformer_jax.keymap import (CONV2D, IDENTITY, LINEAR, ConversionError, Entry, KeyMap,  # noqa: F401
                                 LayerStack, Permute, Rule, flatten_paths, unflatten_paths)


# --- LlamaForCausalLM (docs/method.md 3.1, 2.9) --------------------------------------------------
def llama_keymap(num_layers: int, tie_word_embeddings: bool) -> KeyMap:
  """LlamaForCausalLM keys (the ``llama`` family's map, ``models/families/decoder_hf.py``)."""
  return decoder_hf.keymap(LLMConfig(num_layers=num_layers, tie_word_embeddings=tie_word_embeddings))

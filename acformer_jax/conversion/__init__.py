"""Checkpoint conversion: streaming readers, declarative key maps, tower loaders.

Spec: ``docs/jax_practices.md`` item 7; ``docs/method.md`` 2.9.
"""
from acformer_jax.conversion.keymaps import ConversionError, KeyMap, LayerStack, Rule
from acformer_jax.conversion.sources import TensorSource
from acformer_jax.conversion.streaming import abstract_params, load_params, param_shardings
from acformer_jax.conversion.towers import (llm_config_from_hf, load_hf_clip_vision, load_hf_llama,
                                            vision_config_from_hf)

__all__ = [
    "TensorSource", "ConversionError", "KeyMap", "LayerStack", "Rule", "abstract_params",
    "load_params", "param_shardings", "llm_config_from_hf", "load_hf_clip_vision",
    "load_hf_llama", "vision_config_from_hf",
]

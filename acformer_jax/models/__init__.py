"""Flax (linen) modules: one paper concept per file.

Importing the package registers every vision tower (``towers.tower(name)``).
Public entries: the towers (:class:`VisionTransformer`, :class:`LlamaModel`), the
anchor selector (:func:`select_anchors`, ``docs/method.md`` 1.3), the connectors
(:class:`Connector`, 1.4-1.8), the assembled :class:`MultimodalLM` and the LLM family
registry (:func:`family`; every family in ``families/`` is registered on import).
"""
from acformer_jax.models import families  # noqa: F401  (registers every LLM family)
from acformer_jax.models import dinov2, siglip, towers, vit  # registers the towers
from acformer_jax.models.anchors import select_anchors
from acformer_jax.models.connectors import Connector
from acformer_jax.models.llama import LlamaModel, init_cache
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.models.registry import Family, family, register_family
from acformer_jax.models.vit import VisionTransformer

__all__ = ["Connector", "Family", "LlamaModel", "MultimodalLM", "VisionTransformer", "family",
           "init_cache", "register_family", "select_anchors"]

"""acformer_jax: train, convert and evaluate AcFormer multimodal LLMs in JAX/Flax."""

__version__ = "0.1.0"

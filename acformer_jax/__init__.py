"""acformer_jax: train, convert and evaluate AcFormer multimodal LLMs in JAX/Flax."""

__version__ = "0.1.0"


def load_pretrained(directory, **kwargs):
  """``(MultimodalLM, params)`` from a checkpoint or hf-llava directory (lazy import;
  see :func:`acformer_jax.conversion.pretrained.load_pretrained`)."""
  from acformer_jax.conversion.pretrained import load_pretrained as _load  # pylint: disable=import-outside-toplevel
  return _load(directory, **kwargs)

"""The LLM families (one file each, registered in ``models/registry.py`` on import).

See ``docs/models.md`` "Adding a family".
"""
from acformer_jax.models.families import gemma, llama, llama3, mistral, qwen2  # noqa: F401

"""Flax (linen) modules: one paper concept per file."""

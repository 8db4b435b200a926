"""KV-cache generation (prefill + ``lax.while_loop`` decode), samplers, checkpoint loading
and the evaluation glue (spec ``docs/benchmarks.md`` 1, ``docs/jax_practices.md`` item 11).

``load_generate_fn`` is the default ``--engine`` of ``python -m acformer_jax.evaluate run``.
"""


def load_generate_fn(checkpoint, **options):
  """``generate_fn`` for the evaluation runner (see ``inference.pipeline``)."""
  from acformer_jax.inference import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.load_generate_fn(checkpoint, **options)

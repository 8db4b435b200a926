"""LLaVA-1.5 data: templates, tokenizer, image preprocessing, tfds builders, input pipeline, demo.

Spec: ``docs/method.md`` part 2, ``docs/benchmarks.md`` 1, ``docs/environment.md`` 1, ``docs/offline_assets.md`` 1/4.
The trainer's entry point is :func:`acformer_jax.data.train_data.make_train_iterator`
(also importable as ``acformer_jax.data.make_train_iterator``); see ``docs/data.md``.
"""


def __getattr__(name):  # lazy: keep `import acformer_jax.data.templates` light
  if name in ("make_train_iterator", "default_data_config"):
    from acformer_jax.data import train_data  # pylint: disable=import-outside-toplevel
    return getattr(train_data, name)
  raise AttributeError(name)

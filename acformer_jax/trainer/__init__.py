"""Training: optimizer, sharded train state and step, Orbax checkpoints, metrics, FLOPs.

Modules (one concept each): ``optim`` (AdamW, schedule, trainable/frozen split), ``state``
(TrainState, abstract-first sharded init), ``loss`` (masked next-token loss), ``step`` (the
jitted step), ``checkpoint`` (Orbax store, params-only load/export, preemption), ``initialize``
(initial parameters from ``config.init`` sources), ``metrics``, ``flops``, ``experiment`` and
``validate`` (configs), ``loop`` (the ``python -m acformer_jax.train`` job). See
docs/training.md; spec ``docs/method.md`` 2.1-2.5 and ``docs/jax_practices.md`` items 1-6, 9-15.
"""

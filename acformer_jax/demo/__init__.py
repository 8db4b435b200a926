"""The offline demo: procedural shape scenes, their tfds builder, the held-out question export
and scorer, the demo tokenizer and the tiny recipes.

* ``scenes.py``: scene generation and rendering (``generate``).
* ``builder.py``: the ``acformer_demo`` tfds builder (registered by ``acformer_jax.data.builders``).
* ``eval_export.py``: the ``test`` split as a LLaVA question file (``export_eval``) and the
  ``python -m acformer_jax.demo {export|score}`` command line.
* ``scoring.py``: exact match per category and the answer prior (``score_demo``).
* ``tokenizer.py``: the 512-piece SentencePiece asset the tiny LLM uses.
* ``recipe.py``: the tiny model settings of ``configs/tiny_*.py``.

Nothing in ``trainer/`` knows about the demo: the evaluation registry (``evals/registry.py``)
registers the ``demo`` benchmark with its scorer and its question exporter.
"""
from acformer_jax.demo.eval_export import export_eval
from acformer_jax.demo.scenes import (ANSWERS, CAPTION_PROMPTS, CATEGORIES, COLORS, CORNERS, COUNTS,
                                      SHAPES, caption, generate, render, scene_for)
from acformer_jax.demo.scoring import normalize_answer, score_demo

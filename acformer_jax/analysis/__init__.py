"""Visual-anchor analysis (``docs/method.md`` 1.2-1.3; the paper's motivation figure).

``layers``: every ViT layer's hidden states and CLS attention in one pass;
``stats``: token norms, high-norm tokens, PCA, anchor budgets and overlaps (numpy);
``figures``: the matplotlib figures; ``loading``: the vision tower from a checkpoint.
The CLI is ``python -m acformer_jax.analyze``.
"""

"""``python -m acformer_jax.demo {export|score}``: see ``demo/eval_export.py``."""
import sys

from acformer_jax import cli
from acformer_jax.demo import eval_export

eval_export.define_flags()
cli.run(lambda argv: sys.exit(eval_export.main(argv)))

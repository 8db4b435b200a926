"""tfds builders; importing this package registers ``llava_pretrain``, ``llava_instruct`` and
``acformer_demo`` (e.g. for ``--imports acformer_jax.data.builders``)."""
from acformer_jax.demo.builder import AcformerDemo, DemoConfig
from acformer_jax.data.builders.llava import LlavaInstruct, LlavaPretrain

__all__ = ["AcformerDemo", "DemoConfig", "LlavaInstruct", "LlavaPretrain"]

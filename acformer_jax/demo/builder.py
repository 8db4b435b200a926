"""tfds builder for the offline shapes demo (``acformer_jax.demo.scenes``).

Configs are named ``{task}_{image_size}`` (``caption_56``, ``qa_56``, ``caption_64``, ...,
10000 train / 500 test samples), ``{task}_tiny`` (56 px, 256 / 32, for smoke tests) and
``qa_photo_112`` (scikit-image photo backgrounds); any other size/count is a custom
:class:`DemoConfig`. Splits: ``train`` and the held-out ``test``. Records use the LLaVA schema of
:mod:`acformer_jax.data.builders.common` (``meta`` holds category/answer/objects as JSON).
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from acformer_jax.demo import scenes as demo
from acformer_jax.data.builders import common


@dataclasses.dataclass(eq=False)
class DemoConfig(tfds.core.BuilderConfig):
  """``task``: caption (stage 1) or qa (stage 2); ``image_size`` in pixels."""
  task: str = "qa"
  image_size: int = 64
  num_train: int = 10000
  num_test: int = 500
  photo_backgrounds: bool = False
  seed: int = 0


def _configs():
  out = []
  for size in (42, 56, 64, 70, 84, 112):
    for task in ("caption", "qa"):
      out.append(DemoConfig(name=f"{task}_{size}", task=task, image_size=size,
                            description=f"{task} task, {size}px images"))
  for task in ("caption", "qa"):  # for smoke tests: builds in about a second
    out.append(DemoConfig(name=f"{task}_tiny", task=task, image_size=56, num_train=256, num_test=32,
                          description=f"{task} task, 56px, 256 train / 32 test samples"))
  out.append(DemoConfig(name="qa_photo_112", task="qa", image_size=112, photo_backgrounds=True,
                        description="qa task, 112px, scikit-image photo backgrounds"))
  return out


class AcformerDemo(tfds.core.GeneratorBasedBuilder):
  """Procedural coloured-shape scenes with captions (stage 1) or POPE-style QA (stage 2)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _configs()
  code_path = common.CODE_PATH

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", common.FILE_FORMAT)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=common.features(),
        metadata=tfds.core.MetadataDict(task=c.task, image_size=c.image_size, seed=c.seed,
                                        photo_backgrounds=c.photo_backgrounds,
                                        categories=list(demo.CATEGORIES)))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "test": self._generate_examples("test", c.num_test)}

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    for i, s in enumerate(demo.generate(c.task, split, num, image_size=c.image_size, seed=c.seed,
                                        photo_backgrounds=c.photo_backgrounds)):
      yield i, common.make_example(sample_id=s["id"], image=s["image"], image_path=f"{s['id']}.png",
                                   has_image=True, conversations=s["conversations"], meta=s["meta"])

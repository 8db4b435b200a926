"""tfds builders for LLaVA-1.5 data: stage-1 captions and stage-2 instruction mixes.

Spec: ``docs/method.md`` 2.1 (``blip_laion_cc_sbu_558k.json`` + ``LLaVA-Pretrain/images``) and 2.2
(``llava_v1_5_mix665k.json`` + ``playground/data`` with coco/gqa/ocr_vqa/textvqa/vg folders,
multi-turn and text-only samples). Users point a builder at their local files either with
tfds' ``manual_dir`` (default file names inside it) or with the ``json_path`` / ``image_root``
constructor arguments; see ``docs/data.md``. Built with ``json_path`` (the trainer always
passes it), the build is named by the content fingerprint of its sources
(``<data_dir>/<builder>/src_<fingerprint>/<version>``, :mod:`acformer_jax.data.fingerprint`).
"""
from __future__ import annotations

import pathlib
from typing import Optional

import tensorflow_datasets as tfds

from acformer_jax.data import fingerprint
from acformer_jax.data.builders import common


class _LlavaJsonBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A LLaVA-format JSON + image folder -> one ``train`` split of ArrayRecord files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DEFAULT_JSON = ""
  code_path = common.CODE_PATH
  DEFAULT_IMAGE_DIR = ""  # relative to manual_dir ("" = manual_dir itself)

  def __init__(self, *, json_path: Optional[str] = None, image_root: Optional[str] = None, **kwargs):
    kwargs.setdefault("file_format", common.FILE_FORMAT)
    self._json_path = pathlib.Path(json_path).expanduser().absolute() if json_path else None
    self._image_root = pathlib.Path(image_root).expanduser().absolute() if image_root else None
    self._skipped, self._skipped_records, self._fingerprint = {}, {}, None
    if self._json_path is not None and self._json_path.is_file() and kwargs.get("config") is None:
      self._fingerprint = fingerprint.source_fingerprint(self._json_path, self._image_root,
                                                         str(self.VERSION))
      kwargs["config"] = tfds.core.BuilderConfig(
          name=f"src_{self._fingerprint[:16]}", description=f"built from {self._json_path}")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=common.features(),
                                 metadata=tfds.core.MetadataDict())

  def _paths(self, dl_manager):
    json_path, image_root = self._json_path, self._image_root
    if json_path is None or image_root is None:
      manual = pathlib.Path(dl_manager.manual_dir)
      json_path = json_path or manual / self.DEFAULT_JSON
      image_root = image_root or (manual / self.DEFAULT_IMAGE_DIR if self.DEFAULT_IMAGE_DIR else manual)
    return json_path, image_root

  def _split_generators(self, dl_manager):
    json_path, image_root = self._paths(dl_manager)
    self.info.metadata["source_json"] = str(json_path)
    self.info.metadata["image_root"] = str(image_root)
    self.info.metadata["build_skipped"] = self._skipped
    self.info.metadata["skipped_records"] = self._skipped_records
    self.info.metadata["fingerprint"] = self._fingerprint or fingerprint.source_fingerprint(
        json_path, image_root, str(self.VERSION))
    return {"train": self._generate_examples(json_path, image_root)}

  def _generate_examples(self, json_path, image_root):
    yield from common.llava_examples(json_path, image_root, self._skipped, self._skipped_records)


class LlavaPretrain(_LlavaJsonBuilder):
  """LLaVA-1.5 stage-1 captions (LCS-558K, ``blip_laion_cc_sbu_558k.json`` style)."""

  DEFAULT_JSON = "blip_laion_cc_sbu_558k.json"
  DEFAULT_IMAGE_DIR = "images"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put blip_laion_cc_sbu_558k.json and the extracted images/ folder of "
      "liuhaotian/LLaVA-Pretrain into manual_dir, or pass json_path= and image_root=.")


class LlavaInstruct(_LlavaJsonBuilder):
  """LLaVA-1.5 stage-2 instruction mix (``llava_v1_5_mix665k.json`` style, multi-turn, text-only)."""

  DEFAULT_JSON = "llava_v1_5_mix665k.json"
  DEFAULT_IMAGE_DIR = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put llava_v1_5_mix665k.json into manual_dir (LLaVA's playground/data) next to the image folders "
      "coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images, vg/VG_100K(_2), "
      "or pass json_path= and image_root=.")

"""The trainer's entry point: ``data`` config section -> resumable host-local batch iterator.

Spec: ``docs/design.md`` "Batches"; ``docs/method.md`` 2.1/2.2 (stage settings: ``plain`` without
padding for stage 1, ``vicuna_v1`` with ``pad_to_square`` and ``group_by_length`` for stage 2).
See ``docs/data.md`` for every field of :func:`default_data_config`.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from acformer_jax import config as model_config_lib
from acformer_jax.data import fingerprint
from acformer_jax.data.pipeline import DataIterator, PackSpec, SampleSpec
from acformer_jax.data.templates import canonical_template
from acformer_jax.data.tokenizer import load_encoder, make_encoder

logger = logging.getLogger("acformer_jax.data")

_DEFAULTS: Dict[str, Any] = {
    "builder": "acformer_demo/qa_64",  # tfds name[/config]: llava_pretrain | llava_instruct | acformer_demo/...
    "data_dir": None,          # tfds data dir (None = tfds default, ~/tensorflow_datasets)
    "split": "train",
    "json_path": None,         # LLaVA builders: annotation JSON (else manual_dir/<default name>)
    "image_root": None,        # LLaVA builders: image folder the JSON paths are relative to
    "manual_dir": None,        # LLaVA builders: folder with the default file names
    "build_if_missing": True,  # build the tfds dataset when absent (single-process runs only)
    "reuse_stale": False,      # LLaVA builders: reuse a build of an older version of the sources
    "tokenizer_path": None,    # used when no tokenizer is passed (None = the offline LLaMA asset)
    "template": "vicuna_v1",   # plain (stage 1) | vicuna_v1 (stage 2)
    "max_length": 2048,        # T: tokens per row after image expansion (LLaVA model_max_length)
    "packing": False,          # several samples per row (segment ids; docs/data.md "Packing")
    "max_images_per_row": 1,   # M with packing: image slots per row (text-only samples take none)
    "packing_lookahead": 64,   # samples the packers may hold back for later rows (ceil(64 / G) each)
    "packing_groups": None,    # G packers per global batch (None = gcd(batch, 8)); docs/data.md 5.1
    "overlong": "truncate",    # truncate (LLaVA) | skip
    "global_batch_size": 128,
    "image_size": None,        # None = model_config.vision.image_size
    "pad_to_square": True,     # LLaVA image_aspect_ratio=pad (stage 2 / eval); False for stage 1
    "shuffle": True,
    "seed": None,              # None = the seed argument of make_train_iterator
    "group_by_length": False,  # LLaVA group_by_modality_length
    "num_epochs": None,        # None = endless (epochs chain)
    "drop_remainder": True,
    "prefetch": 2,             # batches prepared ahead on a background thread
    "num_workers": 2,          # threads decoding images / tokenising
}


def default_data_config():
  """The ``data`` section as an ``ml_collections.ConfigDict`` with every field defaulted."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict()
  for k, v in _DEFAULTS.items():
    cfg[k] = config_dict.placeholder(int if k in ("image_size", "seed", "num_epochs", "packing_groups") else str) if v is None else v
  return cfg


def resolve_data_config(data_config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """Defaults + overrides as a plain dict; unknown keys are an error."""
  given = {} if data_config is None else dict(
      data_config.to_dict() if hasattr(data_config, "to_dict") else data_config)
  unknown = sorted(set(given) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown data config field(s) {unknown}; expected some of {sorted(_DEFAULTS)}")
  cfg = dict(_DEFAULTS)
  cfg.update(given)
  return cfg


def make_builder(cfg: Mapping[str, Any]):
  """The tfds builder named by ``cfg['builder']`` with the LLaVA path options."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  import acformer_jax.data.builders  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  kwargs = {}
  if cfg.get("data_dir"):
    kwargs["data_dir"] = cfg["data_dir"]
  name = cfg["builder"].split("/")[0]
  if name.startswith("llava_"):
    kwargs.update({k: cfg[k] for k in ("json_path", "image_root") if cfg.get(k)})
    if cfg.get("manual_dir"):  # explicit paths, so the build is keyed by content
      cls = tfds.builder_cls(name)
      manual = pathlib.Path(cfg["manual_dir"])
      kwargs.setdefault("json_path", str(manual / cls.DEFAULT_JSON))
      kwargs.setdefault("image_root", str(manual / cls.DEFAULT_IMAGE_DIR if cls.DEFAULT_IMAGE_DIR else manual))
  return tfds.builder(cfg["builder"], **kwargs)


def _other_builds(builder) -> List[Any]:
  """Other prepared builds of the same builder, version and source JSON in the same data_dir
  (keyed by another fingerprint, or unkeyed: ``tfds_build --manual_dir``), newest first."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  src = str(getattr(builder, "_json_path", "") or "")
  root = pathlib.Path(builder.data_dir).parents[1]  # <data_dir>/<name>/<config>/<version>
  found = []
  infos = list(root.glob(f"*/{builder.version}/dataset_info.json"))
  infos += list(root.glob(f"{builder.version}/dataset_info.json"))  # built without json_path
  for info in infos:
    if info.parent == pathlib.Path(builder.data_dir):
      continue
    try:
      other = tfds.builder_from_directory(str(info.parent))
    except Exception:  # pylint: disable=broad-except
      continue
    if src and str(other.info.metadata.get("source_json", "")) == src:
      found.append((info.stat().st_mtime, other))
  return [b for _, b in sorted(found, key=lambda x: -x[0])]


def open_data_source(cfg: Mapping[str, Any], *, allow_build: bool = True):
  """Returns ``(builder, data_source)``, building the dataset first if allowed and needed.

  LLaVA builds are keyed by the content of their sources: when the JSON or an image changed
  since the last build, a new build is made next to the old one, unless
  ``data.reuse_stale=True`` asks for the newest old build.
  """
  builder = make_builder(cfg)
  if not builder.is_prepared():
    stale = _other_builds(builder) if getattr(builder, "_json_path", None) else []
    same = [b for b in stale if b.info.metadata.get("fingerprint") == getattr(builder, "_fingerprint", None)]
    if same:  # e.g. built beforehand by tfds_build --manual_dir: same content, other name
      return same[0], same[0].as_data_source(split=cfg["split"])
    if stale and cfg.get("reuse_stale"):
      logger.warning("data.reuse_stale=True: using %s, built from an older version of %s "
                     "(sources changed since)", stale[0].data_dir, cfg.get("json_path"))
      return stale[0], stale[0].as_data_source(split=cfg["split"])
    if stale:
      logger.warning("the sources of %s changed since %s was built: building a new cache in %s "
                     "(data.reuse_stale=True would reuse the old one)", cfg["builder"],
                     stale[0].data_dir, builder.data_dir)
    if not (allow_build and cfg.get("build_if_missing", True)):
      raise FileNotFoundError(
          f"tfds dataset {cfg['builder']} is not prepared in {builder.data_dir}; build it first "
          "(python -m acformer_jax.data.tfds_build, see docs/data.md)")
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    dl = tfds.download.DownloadConfig(manual_dir=cfg["manual_dir"]) if cfg.get("manual_dir") else None
    builder.download_and_prepare(download_config=dl)
  return builder, builder.as_data_source(split=cfg["split"])


def signed_lengths(source, chunk: int = 1024) -> np.ndarray:
  """LLaVA modality lengths of every record: +words with an image, -words text-only."""
  out = np.zeros((len(source),), np.int64)
  for start in range(0, len(source), chunk):
    idx = list(range(start, min(start + chunk, len(source))))
    for i, r in zip(idx, source.__getitems__(idx)):
      out[i] = int(r["num_words"]) if bool(r["has_image"]) else -int(r["num_words"])
  return out


def make_train_iterator(data_config, tokenizer, model_config, process_index: int = 0,
                        process_count: int = 1, seed: int = 0, *, with_index: bool = False) -> DataIterator:
  """Builds the resumable per-host iterator of fixed-shape batches for training.

  Args:
    data_config: the ``data`` section (ConfigDict or dict; fields in :func:`default_data_config`).
    tokenizer: a transformers tokenizer, an ``Encoder``, or None (``load_encoder(tokenizer_path)``,
      which does not import transformers).
    model_config: a ``ModelConfig`` (or its dict) giving ``num_visual_tokens``,
      ``image_token_id`` and the default image size.
    process_index / process_count: this host and the number of hosts (``jax.process_*``).
    seed: shuffle seed (``data_config.seed`` overrides it when set).
    with_index: add ``sample_index`` (int64 ``[B, T]``: the record index of every token, -1 on
      padding) to each batch.

  Returns:
    A :class:`DataIterator`; save ``it.get_state()`` in checkpoints, log ``it.stats()``.
  """
  cfg = resolve_data_config(data_config)
  if not isinstance(model_config, model_config_lib.ModelConfig):
    model_config = model_config_lib.model_config_from_dict(model_config)
  template = canonical_template(cfg["template"])
  from acformer_jax.models import towers  # pylint: disable=import-outside-toplevel
  tower = towers.tower(model_config.vision.tower)  # the tower's own normalisation
  nv = model_config_lib.num_visual_tokens(model_config)
  if cfg["max_length"] <= nv:
    raise ValueError(f"data.max_length={cfg['max_length']} leaves no room for text after {nv} visual tokens")
  encoder = load_encoder(cfg["tokenizer_path"]) if tokenizer is None else make_encoder(tokenizer)
  builder, source = open_data_source(cfg, allow_build=process_count == 1)
  spec = SampleSpec(template=template, max_length=int(cfg["max_length"]),
                    image_size=int(cfg["image_size"] or model_config.vision.image_size),
                    pad_to_square=bool(cfg["pad_to_square"]), num_visual_tokens=nv,
                    image_token_id=model_config.image_token_id, overlong=cfg["overlong"],
                    image_mean=tuple(tower.image_mean), image_std=tuple(tower.image_std))
  if cfg["packing"]:
    pack = PackSpec(spec.max_length, int(cfg["max_images_per_row"]), int(cfg["packing_lookahead"]))
  else:
    pack = PackSpec(spec.max_length, 1, 0, one_per_row=True)
  lengths = signed_lengths(source) if cfg["group_by_length"] else None
  build_skipped = dict(builder.info.metadata.get("build_skipped", {}) or {})
  source_fp = builder.info.metadata.get("fingerprint") or f"{builder.info.full_name}"
  data_fp = fingerprint.data_fingerprint(
      source_fp, tokenizer=fingerprint.tokenizer_digest(cfg["tokenizer_path"]) if tokenizer is None
      else type(tokenizer).__name__ + str(getattr(tokenizer, "vocab_size", "")),
      template=template, max_length=spec.max_length, image_size=spec.image_size,
      pad_to_square=spec.pad_to_square, overlong=spec.overlong, image_mean=spec.image_mean,
      image_std=spec.image_std)
  logger.info("data %s from %s (%d records; build skipped %s; data fingerprint %s)", cfg["builder"],
              builder.data_dir, len(source), build_skipped or "none", data_fp[:16])
  it = DataIterator(
      source, spec=spec, encoder=encoder, global_batch=int(cfg["global_batch_size"]),
      process_index=process_index, process_count=process_count,
      seed=int(cfg["seed"] if cfg["seed"] is not None else seed), shuffle=bool(cfg["shuffle"]),
      lengths=lengths, num_epochs=cfg["num_epochs"], drop_remainder=bool(cfg["drop_remainder"]),
      prefetch=int(cfg["prefetch"]), num_workers=int(cfg["num_workers"]), with_index=with_index,
      build_skipped=build_skipped, packing=pack, packing_groups=cfg["packing_groups"])
  it.data_fingerprint = data_fp
  it.data_dir = str(builder.data_dir)
  return it

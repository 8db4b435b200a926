"""Export a checkpoint back to PyTorch: safetensors shards + index + config (+ tokenizer).

Spec: ``docs/jax_practices.md`` item 7 (reverse exporter, multi-host) and section 9.6/9.8;
``docs/method.md`` 2.9 / 1.5 for the target layouts.

* ``hf-llava``: a ``LlavaForConditionalGeneration`` directory (``from_pretrained``), in
  the layout the checkpoint was converted from (or ``--layout``), all vocab rows kept, with
  the processor files ``AutoProcessor`` reads (``hf_processor``: tokenizer with ``<image>``,
  image processor, chat template).
* ``llava`` / ``acformer``: the original key layout (``model.layers.*``, ``lm_head``,
  ``model.mm_projector.*``) plus the CLIP tower in ``vision_tower/`` (a
  ``CLIPVisionModel`` directory that ``mm_vision_tower`` points to).

Parameters are restored one leaf at a time (Orbax partial restore, sharded over the
mesh) and written one tensor (stacked-layer row) at a time; process 0 writes, other
processes take part in the gathers. Output is written under a temporary name.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Dict, Optional

import jax
import numpy as np

from acformer_jax import config as config_lib
from acformer_jax import outputs
from acformer_jax import params_store
from acformer_jax.conversion import hf_llava, llava
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.conversion import writer as writer_lib
from acformer_jax.conversion.sources import SafetensorsFile
from acformer_jax.conversion.keymaps import (KeyMap, flatten_paths,
                                             unflatten_paths)
from acformer_jax.conversion.pipeline import CONVERSION_FILE, EXTRAS_FILE
from acformer_jax.models.towers import tower

log = logging.getLogger("acformer_jax.export")
FORMATS = ("hf-llava", "llava", "acformer")
VISION_DIR = "vision_tower"


def _to_host(x) -> np.ndarray:
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class _LeafReader:
  """Restores stored leaves onto their shardings (``params_store.restore``, partial), a group
  of leaves of at most ``budget`` bytes (or one larger leaf) at a time, in path order."""

  def __init__(self, params_dir: pathlib.Path, tree, budget: int = 1 << 30):
    self.dir, self.budget = params_dir, budget
    stored = params_store.stored_shapes(params_dir)
    self.targets = {}
    for path, t in flatten_paths(tree).items():
      if path not in stored:
        raise ValueError(f"{params_dir}: parameter {path} missing (does model_config.json match?)")
      shape, dtype = stored[path]
      if shape != tuple(t.shape):
        raise ValueError(f"{params_dir}: {path} has shape {shape}, model_config.json "
                         f"implies {tuple(t.shape)}")
      self.targets[path] = jax.ShapeDtypeStruct(t.shape, dtype, sharding=t.sharding)
    self._cache: Dict[str, jax.Array] = {}

  def _load_group(self, first: str) -> None:
    order = sorted(self.targets)
    group, size = [], 0
    for p in order[order.index(first):]:
      nbytes = int(np.prod(self.targets[p].shape)) * np.dtype(self.targets[p].dtype).itemsize
      if group and size + nbytes > self.budget:
        break
      group.append(p)
      size += nbytes
    item = unflatten_paths({p: self.targets[p] for p in group})
    self._cache = flatten_paths(params_store.restore(self.dir, item))

  def row(self, path: str, row: Optional[int]) -> np.ndarray:
    if path not in self._cache:
      self._load_group(path)
    x = self._cache[path]
    return _to_host(x if row is None else x[row])


class _MemoryReader:
  """:class:`_LeafReader`'s interface over parameters already in memory."""

  def __init__(self, params):
    self._flat = flatten_paths(params)
    self.targets = {p: jax.ShapeDtypeStruct(x.shape, x.dtype) for p, x in self._flat.items()}

  def row(self, path: str, row: Optional[int]) -> np.ndarray:
    x = self._flat[path]
    return _to_host(x if row is None else x[row])


def _plan_tensors(keymap: KeyMap, targets, dtype: np.dtype):
  """``(name, shape, dtype)`` per output tensor, split views merged back."""
  out, seen = [], set()
  for e in keymap.entries:
    t = targets[e.path]
    shape = e.transform.inverse_shape(tuple(t.shape[1:]) if e.row is not None else tuple(t.shape))
    m = plan_lib.SPLIT_RE.match(e.hf)
    if m:
      if m.group(1) in seen:
        continue
      seen.add(m.group(1))
      out.append((m.group(1), (shape[0] * int(m.group(3)),) + tuple(shape[1:]), dtype))
    else:
      out.append((e.hf, shape, dtype))
  return out


def _write_keymap(reader: _LeafReader, keymap: KeyMap, directory: pathlib.Path, dtype,
                  max_shard_bytes: int, extra: Optional[Dict[str, np.ndarray]] = None,
                  progress: bool = False, label: str = "weights"):
  """Writes every keymap tensor (+ ``extra``) as shards; collective over processes."""
  host0 = jax.process_index() == 0
  planned = _plan_tensors(keymap, reader.targets, dtype)
  planned += [(k, v.shape, dtype) for k, v in (extra or {}).items()]
  w = writer_lib.ShardedWriter(directory, planned, max_shard_bytes) if host0 else None
  parts: Dict[str, Dict[int, np.ndarray]] = {}
  entries = sorted(keymap.entries, key=lambda e: e.path)  # restore groups in path order
  it = entries
  if progress and host0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(entries, desc=f"export {label}", unit="tensor")
  for e in it:
    arr = e.transform.inverse(reader.row(e.path, e.row))
    if not host0:
      continue
    m = plan_lib.SPLIT_RE.match(e.hf)
    if m:
      got = parts.setdefault(m.group(1), {})
      got[int(m.group(2))] = arr
      if len(got) == int(m.group(3)):
        w.write(m.group(1), np.concatenate([got[i] for i in range(len(got))], axis=0))
        del parts[m.group(1)]
    else:
      w.write(e.hf, arr)
  if host0:
    for k, v in (extra or {}).items():
      w.write(k, v)
    return w.close()
  return []


def _copy_tokenizer(checkpoint: pathlib.Path, out: pathlib.Path) -> None:
  src = params_store.find_tokenizer(checkpoint)
  if src is None:
    log.warning("%s has no tokenizer; the export has none either", checkpoint)
  params_store.copy_tokenizer(src, out)


def _write_processor(checkpoint: pathlib.Path, mc: config_lib.ModelConfig,
                     out: pathlib.Path) -> None:
  """Tokenizer + processor + chat template (``hf_processor``), with the template and
  padding the checkpoint was trained or converted with."""
  from acformer_jax.conversion import hf_processor  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import pretrained  # pylint: disable=import-outside-toplevel
  src = params_store.find_tokenizer(checkpoint)
  if src is None:
    log.warning("%s has no tokenizer; the export has no tokenizer or processor either", checkpoint)
    return
  defaults = pretrained.checkpoint_defaults(checkpoint, mc)
  hf_processor.write_processor(out, mc, src, pad_to_square=defaults["pad_to_square"],
                               template=defaults["template"])


def export(checkpoint, fmt: str, output, *, mesh=None, layout: Optional[str] = None,
           dtype: Optional[str] = None, max_shard_size="5GB", overwrite: bool = False,
           progress: bool = False) -> pathlib.Path:
  """Writes ``checkpoint`` (a converted / exported Orbax directory, or a transformers Llava
  directory, converted on the fly) as ``fmt``."""
  from acformer_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  checkpoint, output = pathlib.Path(checkpoint), pathlib.Path(output).absolute()
  hf_dir = params_store.is_hf_llava(checkpoint) and not (checkpoint / params_store.CONFIG_FILE).is_file()
  if hf_dir:  # a transformers Llava directory: converted on the fly (formats.make_plan)
    from acformer_jax.conversion import formats  # pylint: disable=import-outside-toplevel
    plan = formats.make_plan("hf-llava", checkpoint)
    mc = plan.config
  else:
    mc = params_store.read_model_config(checkpoint)
  if fmt not in FORMATS:
    import difflib  # pylint: disable=import-outside-toplevel
    close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
    fits = ("hf-llava or llava" if mc.connector.type == "mlp2x_gelu" else "llava"
            if mc.connector.type == "linear" else "acformer")
    raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}"
                     + (f"; did you mean {close[0]!r}?" if close else "")
                     + f" (this checkpoint's connector {mc.connector.type!r} exports as {fits})")
  if mc.connector.input_norm:
    raise ValueError(
        f"{checkpoint}: model.connector.input_norm=True (a LayerNorm on the tower features) has "
        f"no counterpart in the {fmt} format, whose projectors read the features as they are; "
        "exporting would drop it silently. Use the Orbax checkpoint with generate/evaluate.")
  info_path = checkpoint / CONVERSION_FILE
  info = json.loads(info_path.read_text()) if info_path.is_file() else {}
  if output.exists() and not overwrite:
    raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
  outputs.check_writable(output.parent, "--output folder")
  mesh = mesh if mesh is not None else sharding_lib.make_mesh((1, -1, 1))
  if hf_dir:
    from acformer_jax.conversion import pipeline  # pylint: disable=import-outside-toplevel
    mc, params = pipeline.build_params(plan, mesh)
    info = dict(plan.info, format="hf-llava")
    reader = _MemoryReader(params)
  else:
    reader = _LeafReader(checkpoint / params_store.PARAMS_DIR, params_store.target_tree(mc, mesh))
  same = info.get("format") == fmt or (fmt == "llava" and info.get("format") == "llava-stage1")
  main_dtype = np.dtype(dtype or (same and info.get("source_dtype")) or mc.param_dtype)
  vision_dtype = np.dtype(dtype or info.get("vision_dtype") or main_dtype)
  shard = writer_lib.parse_size(max_shard_size)
  host0 = jax.process_index() == 0
  # (``output`` was checked before any work: an existing one is replaced only with --overwrite)
  with params_store.atomic_directory(output, overwrite=True, name="export") as tmp:
    if fmt == "hf-llava":
      prefixes = hf_llava.LAYOUTS[layout] if layout else tuple(
          info.get("layout") or hf_llava.LAYOUTS["legacy"])
      base = info.get("source_config") if info.get("format") == "hf-llava" else None
      cfg = hf_llava.export_config(mc, main_dtype.name, base)
      _write_keymap(reader, hf_llava.export_keymap(mc, prefixes), tmp, main_dtype, shard,
                    progress=progress)
    else:
      if layout:
        raise ValueError("--layout applies to hf-llava only")
      base = info.get("source_config") if same else None
      cfg = llava.export_config(mc, fmt, main_dtype.name, str(output / VISION_DIR), base)
      extra = None
      if mc.connector.type == "acformer":
        extra = {llava.PROJ + "0.latents": _latents(checkpoint, mc, main_dtype)}
      _write_keymap(reader, llava.export_keymap(mc), tmp, main_dtype, shard, extra, progress)
      vprefix = info.get("vision_prefix", "vision_model.")
      vmap = tower(mc.vision.tower).keymap(mc.vision).with_prefix(vprefix, "vision")
      _write_keymap(reader, vmap, tmp / VISION_DIR, vision_dtype, shard, progress=progress,
                    label=VISION_DIR)
      if host0:
        vcfg = dict(info.get("vision_config") or {}) if same else {}
        if "vision_config" in vcfg:  # a two-tower source (CLIPModel, SiglipModel)
          vcfg = dict(vcfg.get("vision_config") or {})
        vcfg.update(hf_llava.clip_config_dict(mc.vision),
                    architectures=[tower(mc.vision.tower).hf_architecture],
                    torch_dtype=vision_dtype.name)
        (tmp / VISION_DIR / "config.json").write_text(json.dumps(vcfg, indent=2) + "\n")
    if host0:
      (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
      if fmt == "hf-llava":
        _write_processor(checkpoint, mc, tmp)
      else:
        _copy_tokenizer(checkpoint, tmp)
  return output


def _latents(checkpoint: pathlib.Path, mc: config_lib.ModelConfig, dtype) -> np.ndarray:
  """The official resampler's unused ``latents``: preserved ones, else zeros (docs/method.md 1.4)."""
  path = checkpoint / EXTRAS_FILE
  if path.is_file():
    f = SafetensorsFile(path)
    if "resampler_latents" in f.tensors:
      return f.read_slice("resampler_latents", (slice(None),) * 2).astype(dtype)
  return np.zeros(llava.latents_shape(mc), dtype)

"""A conversion plan: the model config, the mounted sources and the key map, built from
headers and config files only (no tensor data). Shared by every input format.

Spec: ``docs/method.md`` 2.9 (key names), 1.5 (AcFormer projector keys), 3 (config
numbers); ``docs/jax_practices.md`` item 7 (table-driven conversion).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from acformer_jax import config as config_lib
from acformer_jax.conversion import towers
from acformer_jax.conversion.keymaps import (IDENTITY, LINEAR, ConversionError, KeyMap, LayerStack,
                                             Rule)
from acformer_jax.models import registry
from acformer_jax.conversion.sources import TensorSource
from acformer_jax.models.towers import tower


@dataclasses.dataclass
class Plan:
  """Everything a conversion needs before any tensor is read.

  Attributes:
    format: input format name (``formats.FORMATS``).
    config: the target ``ModelConfig``.
    source: mounted checkpoints.
    keymap: source key -> our param path for every parameter outside ``fresh``.
    fresh: top-level subtrees initialised from scratch (``("connector",)`` when only
      the towers are given).
    tokenizer_dir: where the tokenizer files are (None: none found).
    info: provenance saved as ``conversion.json`` (source configs, layouts, dtypes);
      the exporter uses it to write back the original layout.
    extras: preserved source tensors the model does not use (our name -> source key),
      e.g. the official resampler's unused ``latents``.
    problems: config/tensor disagreements found while planning (reported together
      with the key-map problems in one error).
    reference: how the self-check builds its PyTorch reference (``check.py``).
    declared_dtypes: mount prefix -> the dtype its ``config.json`` declares (checked
      against every tensor).
  """
  format: str
  config: config_lib.ModelConfig
  source: TensorSource
  keymap: KeyMap
  fresh: Tuple[str, ...] = ()
  tokenizer_dir: Optional[pathlib.Path] = None
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)
  extras: Dict[str, str] = dataclasses.field(default_factory=dict)
  problems: List[str] = dataclasses.field(default_factory=list)
  reference: Dict[str, Any] = dataclasses.field(default_factory=dict)
  declared_dtypes: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)


def fail(what: str, problems: List[str]):
  raise ConversionError(f"{what}:\n  " + "\n  ".join(problems))


def read_json(path, what: str) -> dict:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found ({what})")
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None


def source_dtype(config_dict: dict) -> Optional[str]:
  """The ``dtype`` / ``torch_dtype`` a transformers config declares (None if absent)."""
  v = config_dict.get("dtype", config_dict.get("torch_dtype"))
  return str(v).replace("torch.", "") if v else None


# --- tower pieces ---------------------------------------------------------------------
def clip_prefix(source: TensorSource, mount: str,
                vc: Optional[config_lib.VisionConfig] = None) -> str:
  """Key prefix of the vision tower ``vc.tower`` (CLIP by default) inside ``mount``
  (handles two-tower files such as CLIPModel / SiglipModel too)."""
  keys = source.keys(mount)
  return tower(vc.tower if vc else "clip").hf_prefix([k[len(mount):] for k in keys
                                                      if k.startswith(mount)])


def vision_keymap(vc: config_lib.VisionConfig, hf_prefix: str, full_clip: bool = True) -> KeyMap:
  """The tower's key map under ``hf_prefix``; ``full_clip``: the other tower of a two-tower
  file (text tower, projections) may be present and is not ours."""
  entry = tower(vc.tower)
  km = entry.keymap(vc).with_prefix(hf_prefix, "vision")
  if full_clip:
    root = hf_prefix
    for wrapper in ("vision_model.", "dinov2.", "backbone."):
      if root.endswith(wrapper):
        root = root[:-len(wrapper)]
    km = km + KeyMap((), tuple(re.escape(root) + p for p in entry.hf_extras))
  return km


def llm_keymap(lc: config_lib.LLMConfig, body_prefix: str, head_key: str) -> KeyMap:
  """The family's HF causal-LM keys with ``model.`` -> ``body_prefix`` and
  ``lm_head.weight`` -> ``head_key``."""
  def rename(k):
    return head_key if k == "lm_head.weight" else body_prefix + k[len("model."):]
  km = registry.family(lc.family).keymap(lc).rename_hf(rename)
  ignore = [re.escape(body_prefix) + r"(?:layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"]
  if lc.tie_word_embeddings:
    ignore.append(re.escape(head_key))
  return KeyMap(tuple(dataclasses.replace(e, path="llm/" + e.path) for e in km.entries),
                tuple(ignore))


def mlp_projector_keymap(names: Tuple[str, ...]) -> KeyMap:
  """``names``: HF module names of the projector linears (1 for ``linear``, 2 for MLP)."""
  rules = []
  for i, n in enumerate(names):
    rules += [Rule(f"{n}.weight", f"connector/projector/linear_{i + 1}/kernel", LINEAR),
              Rule(f"{n}.bias", f"connector/projector/linear_{i + 1}/bias", IDENTITY)]
  return KeyMap.build(rules)


def split_key(real: str, part: int, parts: int) -> str:
  """Virtual key of row block ``part`` of ``parts`` of ``real``."""
  return f"{real}[{part}/{parts}]"


SPLIT_RE = re.compile(r"^(.*)\[(\d+)/(\d+)\]$")


def resampler_keymap(prefix: str, depth: int) -> KeyMap:
  """Official ``PerceiverResampler`` keys (docs/method.md 1.4, 1.5) under ``prefix`` (e.g.
  ``model.mm_projector.0.``); ``to_kv`` appears as its two row halves."""
  ln = lambda hf, ours: [Rule(f"{hf}.weight", f"{ours}/scale"), Rule(f"{hf}.bias", f"{ours}/bias")]
  kv = f"{prefix}layers.{{i}}.0.to_kv.weight"
  layer = (ln(f"{prefix}layers.{{i}}.0.norm_media", "norm_media")
           + ln(f"{prefix}layers.{{i}}.0.norm_latents", "norm_latents")
           + ln(f"{prefix}layers.{{i}}.1.0", "ff_norm")
           + [Rule(f"{prefix}layers.{{i}}.0.to_q.weight", "to_q/kernel", LINEAR),
              Rule(split_key(kv, 0, 2), "to_k/kernel", LINEAR),
              Rule(split_key(kv, 1, 2), "to_v/kernel", LINEAR),
              Rule(f"{prefix}layers.{{i}}.0.to_out.weight", "to_out/kernel", LINEAR),
              Rule(f"{prefix}layers.{{i}}.1.1.weight", "ff_in/kernel", LINEAR),
              Rule(f"{prefix}layers.{{i}}.1.3.weight", "ff_out/kernel", LINEAR)])
  km = KeyMap.build(ln(f"{prefix}norm", "norm"), layer, [LayerStack("layers", 0, depth)])
  return km.with_prefix("", "connector/resampler")


def add_split_views(source: TensorSource, keymap: KeyMap, problems: List[str]) -> None:
  """Registers the row-block views the key map names; odd shapes become problems."""
  keys = set(source.keys())
  for e in keymap.entries:
    m = SPLIT_RE.match(e.hf)
    if not m or m.group(1) not in keys:
      continue
    real, part, parts = m.group(1), int(m.group(2)), int(m.group(3))
    rows = source.shape(real)[0]
    if rows % parts:
      problems.append(f"{real}: {rows} rows cannot be split into {parts} equal parts")
      continue
    n = rows // parts
    source.add_view(e.hf, real, part * n, (part + 1) * n)


def count_layers(keys, pattern: str) -> int:
  """1 + the largest ``{i}`` matched by ``pattern`` (a regex with one group), else 0."""
  found = [int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m]
  return max(found) + 1 if found else 0


def check_dtypes(source: TensorSource, keymap: KeyMap, declared: Dict[str, Optional[str]]
                 ) -> List[str]:
  """Every mapped tensor must be floating point, and match the dtype its config declares.

  ``declared``: mount prefix -> declared dtype name (``float16``, ...) or None.
  """
  problems, mismatched = [], {}
  for e in keymap.entries:
    try:
      _, dt = source.info(e.hf)
    except KeyError:
      continue
    if not np.issubdtype(dt, np.floating) and dt.name != "bfloat16":
      problems.append(f"{e.hf}: dtype {dt.name}, expected a floating-point tensor")
      continue
    prefix = max((p for p in declared if e.hf.startswith(p)), key=len, default=None)
    want = declared.get(prefix) if prefix is not None else None
    if want and dt.name != want:
      mismatched.setdefault((prefix, want), []).append(f"{e.hf} ({dt.name})")
  for (prefix, want), keys in sorted(mismatched.items()):
    problems.append(f"config.json of {prefix or 'the input'!s} declares dtype {want} but "
                    f"{len(keys)} tensor(s) differ: {', '.join(keys[:8])}"
                    + (" ..." if len(keys) > 8 else ""))
  return problems


def widest_dtype(source: TensorSource, keymap: KeyMap) -> str:
  """``bfloat16`` when every mapped tensor is bfloat16, else ``float32`` (which holds
  float16 and float32 exactly)."""
  names = set()
  for e in keymap.entries:
    try:
      names.add(source.info(e.hf)[1].name)
    except KeyError:
      pass
  return "bfloat16" if names and names <= {"bfloat16"} else "float32"

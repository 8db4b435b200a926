"""``init.from_pretrained=DIR``: fine-tune a checkpoint with only the recipe in the config.

``DIR`` is one of this stack's checkpoints (``model_config.json`` + Orbax ``params/``: a
converted model, a training export, or a run directory whose ``export/`` is used) or a
transformers ``LlavaForConditionalGeneration`` directory, converted on the fly with the
converter's key tables (``conversion/hf_llava.py``; nothing is written).

The checkpoint supplies everything model-shaped: ``config.model``'s ``vision``, ``llm``,
``connector`` and ``image_token_id``, the tokenizer (``data.tokenizer_path``, added tokens
included) and the template defaults (``data.template``, ``data.pad_to_square``,
``data.max_length``). :func:`resolve` fills the fields the experiment config leaves unset
(None, as ``configs/finetune.py`` does) and raises one :class:`ConfigError` naming every
explicitly set model field that contradicts the checkpoint, with both values.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional

from acformer_jax import config as config_lib
from acformer_jax import params_store
from acformer_jax.trainer.validate import ConfigError

KINDS = ("acformer", "hf-llava")
MODEL_SECTIONS = ("vision", "llm", "connector")
DATA_DEFAULTS = ("template", "pad_to_square", "max_length")
LLAVA_MAX_LENGTH = 2048  # LLaVA-1.5's model_max_length


@dataclasses.dataclass
class Pretrained:
  """What a checkpoint directory says about the model it holds."""
  directory: pathlib.Path          # the directory the parameters are read from
  kind: str                        # one of KINDS
  model: config_lib.ModelConfig
  tokenizer_dir: Optional[pathlib.Path]
  data_defaults: Dict[str, Any]    # DATA_DEFAULTS -> value


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"init.from_pretrained: cannot read {path}: {e}") from None


def _acformer_dir(d: pathlib.Path) -> Optional[pathlib.Path]:
  return next((c for c in (d, d / "export") if params_store.is_checkpoint(c)), None)


def _max_length(llm: config_lib.LLMConfig, given=None) -> int:
  cap = int(given) if isinstance(given, int) and 0 < given < 10**7 else LLAVA_MAX_LENGTH
  return min(cap, llm.max_position_embeddings)


def _acformer_defaults(d: pathlib.Path, mc: config_lib.ModelConfig) -> Dict[str, Any]:
  out = {"template": "vicuna_v1", "pad_to_square": True, "max_length": _max_length(mc.llm)}
  exp = d / "experiment_config.json"   # a training export: what the run used
  conv = d / "conversion.json"         # a converted checkpoint: the source's LLaVA fields
  if exp.is_file():
    data = _read_json(exp).get("data") or {}
    if data.get("template") and data["template"] != "plain":  # stage-1 runs continue as chat
      out["template"] = data["template"]
      out["pad_to_square"] = bool(data.get("pad_to_square", True))
    if data.get("max_length"):
      out["max_length"] = min(int(data["max_length"]), mc.llm.max_position_embeddings)
  elif conv.is_file():
    src = _read_json(conv).get("source_config") or {}
    if "image_aspect_ratio" in src:
      out["pad_to_square"] = src["image_aspect_ratio"] == "pad"
    out["max_length"] = _max_length(mc.llm, src.get("tokenizer_model_max_length"))
  return out


def checkpoint_defaults(directory, mc: config_lib.ModelConfig) -> Dict[str, Any]:
  """The template defaults (:data:`DATA_DEFAULTS`) of a checkpoint or HF Llava directory."""
  d = pathlib.Path(directory)
  if not (d / "model_config.json").is_file() and (d / "config.json").is_file():
    return _hf_defaults(d, mc)
  return _acformer_defaults(d, mc)


def _hf_defaults(d: pathlib.Path, mc: config_lib.ModelConfig) -> Dict[str, Any]:
  pre = d / "preprocessor_config.json"
  pad = bool(_read_json(pre).get("do_pad", True)) if pre.is_file() else True
  tok_cfg = d / "tokenizer_config.json"
  given = _read_json(tok_cfg).get("model_max_length") if tok_cfg.is_file() else None
  return {"template": "vicuna_v1", "pad_to_square": pad, "max_length": _max_length(mc.llm, given)}


def inspect(directory) -> Pretrained:
  """Reads the model config, tokenizer location and template defaults of ``directory``."""
  from acformer_jax.conversion import hf_llava  # pylint: disable=import-outside-toplevel
  d = pathlib.Path(directory).expanduser().absolute()
  if not d.is_dir():
    raise ConfigError(f"init.from_pretrained={directory}: no such directory")
  ours = _acformer_dir(d)
  if ours is not None:
    try:
      mc = params_store.read_model_config(ours)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"init.from_pretrained: {e}") from None
    return Pretrained(ours, "acformer", mc, params_store.find_tokenizer(ours),
                      _acformer_defaults(ours, mc))
  hf = d / "config.json"
  if hf.is_file() and _read_json(hf).get("model_type") == "llava":
    problems: List[str] = []
    mc = hf_llava.model_config_from_hf_llava(_read_json(hf), problems)
    if problems:
      raise ConfigError(f"init.from_pretrained={d}: unsupported Llava config: " + "; ".join(problems))
    return Pretrained(d, "hf-llava", mc, params_store.find_tokenizer(d), _hf_defaults(d, mc))
  raise ConfigError(
      f"init.from_pretrained={d}: neither an acformer_jax checkpoint (model_config.json + "
      "params/, or a run directory with export/) nor a transformers Llava directory "
      "(config.json with model_type 'llava'); convert other formats with "
      "`python -m acformer_jax.convert` first")


def _norm(v):
  if isinstance(v, Mapping):
    return tuple(sorted((k, _norm(x)) for k, x in v.items()))
  if isinstance(v, (list, tuple)):
    return tuple(_norm(x) for x in v)
  return v


def _model_values(mc: config_lib.ModelConfig) -> Dict[str, Any]:
  """``"llm.hidden_size" -> value`` for every model-shaped field."""
  d = config_lib.model_config_to_dict(mc)
  out = {f"{s}.{k}": v for s in MODEL_SECTIONS for k, v in d[s].items()}
  out["image_token_id"] = d["image_token_id"]
  return out


def _set(cfg, dotted: str, value) -> None:
  *parents, last = dotted.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  if isinstance(value, dict):
    value = tuple(sorted(value.items()))
  with node.ignore_type():
    node[last] = value


def _get(cfg, dotted: str):
  node = cfg
  for p in dotted.split("."):
    node = node.get(p) if hasattr(node, "get") else None
    if node is None:
      return None
  return node


def resolve(config):
  """A copy of ``config`` with the model, tokenizer and template defaults of
  ``init.from_pretrained`` filled in. Without it, only an unset ``data.tokenizer_path``
  may be filled from ``init.params_from`` (see :func:`_with_init_tokenizer`).

  Raises:
    ConfigError: the directory is not a checkpoint, ``init.params_from`` is also set, or
      explicitly set model fields contradict the checkpoint (all of them, with both values).
  """
  src = config.init.get("from_pretrained") if "init" in config else None
  if not src:
    return _with_init_tokenizer(config)
  if config.init.get("params_from"):
    raise ConfigError(f"init.from_pretrained={src} and init.params_from="
                      f"{config.init.params_from} both name every subtree's source; set one")
  pre = inspect(src)
  out = copy.deepcopy(config)
  conflicts = []
  for field, value in _model_values(pre.model).items():
    given = _get(out.model, field)
    if given is None:
      _set(out.model, field, value)
    elif _norm(given) != _norm(value):
      conflicts.append(f"model.{field}: config {given!r} vs checkpoint {value!r}")
  if conflicts:
    raise ConfigError(f"init.from_pretrained={pre.directory}: the config contradicts the "
                      "checkpoint (unset these fields to take the checkpoint's values): "
                      + "; ".join(conflicts))
  with out.init.ignore_type():
    out.init.from_pretrained = str(pre.directory)
  if out.data.get("tokenizer_path") is None:
    if pre.tokenizer_dir is None:
      raise ConfigError(f"init.from_pretrained={pre.directory} has no tokenizer (tokenizer.model"
                        " or tokenizer.json); set data.tokenizer_path to the one it was trained with")
    _set(out.data, "tokenizer_path", str(pre.tokenizer_dir))
  for k in DATA_DEFAULTS:
    if out.data.get(k) is None:
      _set(out.data, k, pre.data_defaults[k])
  return out


def _with_init_tokenizer(config):
  """Without ``from_pretrained``: an unset ``data.tokenizer_path`` becomes the tokenizer of
  ``init.params_from=orbax:<run or export>`` when it has one (a stage-2 run trains with the
  tokenizer of its stage-1 run)."""
  spec = config.init.get("params_from") if "init" in config else None
  if not spec or not str(spec).startswith("orbax:") or "data" not in config or \
      config.data.get("tokenizer_path") is not None:
    return config
  root = pathlib.Path(str(spec)[len("orbax:"):].split("#")[0])
  ours = _acformer_dir(root) if root.is_dir() else None
  tok = params_store.find_tokenizer(ours) if ours is not None else None
  if tok is None:
    return config
  out = copy.deepcopy(config)
  _set(out.data, "tokenizer_path", str(tok))
  return out


def load_subtree(directory, name: str, abstract) -> Dict[str, Any]:
  """The ``name`` subtree (``vision`` | ``connector`` | ``llm``) of ``directory``, restored
  or converted straight into the shardings and dtypes of ``abstract``."""
  import jax  # pylint: disable=import-outside-toplevel
  pre = inspect(directory)
  if pre.kind == "acformer":
    return params_store.restore(pre.directory, abstract, prefix=(name,))
  from acformer_jax.conversion import formats, pipeline  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion.keymaps import flatten_paths, unflatten_paths  # pylint: disable=import-outside-toplevel
  plan = formats.make_plan("hf-llava", pre.directory)
  # Checked against the whole model (shapes only), read for this subtree only.
  try:
    pipeline.validate(plan, flatten_paths(params_store.target_tree(plan.config)))
  except ValueError as e:
    raise ConfigError(f"init.from_pretrained={pre.directory}: {e}") from None
  flat = pipeline.load_params(plan, flatten_paths({name: abstract}))
  out = unflatten_paths(flat)[name]
  return jax.tree.map(lambda x, a: x.astype(a.dtype) if x.dtype != a.dtype else x, out, abstract)

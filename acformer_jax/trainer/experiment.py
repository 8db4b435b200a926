"""Shared pieces of the ``configs/*.py`` experiment files (ml_collections ``get_config()``).

Spec: ``docs/jax_practices.md`` item 13 (Python configs, ``get_config(arg)``, config_flags
overrides, the full config stored with every checkpoint) and ``docs/method.md`` 2.1-2.2 (the
LLaVA-1.5 two-stage recipe). Sections of an experiment config:

* ``model``: :class:`acformer_jax.config.ModelConfig` fields (``vision``, ``llm``, ``connector``).
* ``mesh``: ``shape`` = ``(data, fsdp, tensor)`` per slice (one entry may be -1) and
  ``dcn_shape`` across slices (multi-slice: ``create_hybrid_device_mesh``).
* ``data``: the input pipeline (``acformer_jax.data.train_data``; ``global_batch_size`` follows
  ``train.global_batch_size``).
* ``train``: steps, batch, accumulation, optimizer, trainable patterns, logging, guards.
* ``checkpoint``: interval, keep-N, async, export.
* ``init``: where parameters come from when not resuming (see :func:`init_sources`).
* ``eval``: held-out evaluation during and after training (``trainer/evaluation.py``).
"""
from __future__ import annotations

from typing import Dict

import ml_collections
from ml_collections import config_dict

from acformer_jax import config as config_lib
from acformer_jax.models import connectors
from acformer_jax.trainer import evaluation

STAGE1_TRAINABLE = ("connector/",)
STAGE2_TRAINABLE = ("connector/", "llm/")
# The paper's Tables 3-4 at budgets 64/144/256 (65/145/257 visual tokens; the official
# C-Abstractor gives K, E-ViT K+2): "<type><K>", plus LLaVA-1.5's mlp2x_gelu.
PAPER_CONNECTORS = ("acformer", "pooling", "pooling_pr", "random_pr", "pr", "c_abstractor",
                    "top_p", "evit")
CONNECTOR_PRESETS = {
    **{f"{kind}{k}": dict(type=kind, num_queries=k) for kind in PAPER_CONNECTORS
       for k in (64, 144, 256)},
    "mlp2x_gelu": dict(type="mlp2x_gelu"),
}
AUTO_MAX_LENGTH = 0  # data.max_length: the connector's stage-1 rule, resolved at validation
INIT_SUBTREES = ("vision", "connector", "llm")


def dict_of(dc) -> ml_collections.ConfigDict:
  import dataclasses  # pylint: disable=import-outside-toplevel
  d = dataclasses.asdict(dc)
  if "rope_scaling" in d and d["rope_scaling"] is None:
    d["rope_scaling"] = config_dict.placeholder(tuple)
  if "head_dim" in d and d["head_dim"] is None:
    d["head_dim"] = config_dict.placeholder(int)
  if "sliding_window" in d and d["sliding_window"] is None:
    d["sliding_window"] = config_dict.placeholder(int)
  return ml_collections.ConfigDict(d)


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default; experiment files override a few."""
  from acformer_jax.data.train_data import default_data_config  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  mc = config_lib.ModelConfig()
  c.model = ml_collections.ConfigDict({
      "vision": dict_of(mc.vision), "llm": dict_of(mc.llm), "connector": dict_of(mc.connector),
      "image_token_id": mc.image_token_id, "dtype": "bfloat16", "param_dtype": "float32",
      "scan_layers": True, "remat_policy": "minimal", "attention": mc.attention})
  c.mesh = ml_collections.ConfigDict({"shape": (1, -1, 1), "dcn_shape": (1, 1, 1)})

  c.train = ml_collections.ConfigDict()
  t = c.train
  t.stage = 1
  t.steps = 2181                    # or None with train.epochs set (never both)
  t.epochs = config_dict.placeholder(int)  # passes over the data; steps derived (data/epochs.py)
  t.global_batch_size = 256
  t.grad_accum_steps = 1
  t.seed = 0
  t.trainable = STAGE1_TRAINABLE
  t.optimizer = ml_collections.ConfigDict({
      "lr": 1e-3, "warmup_ratio": 0.03, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
      "weight_decay": 0.0, "clip_norm": 1.0})
  t.loss_positions = 0              # >0: LM head only on that many supervised positions per row
  t.loss_impl = "full"              # full | tiled (head + CE in vocab tiles, trainer/loss.py)
  t.vocab_chunk = 8192              # vocab columns per tile with loss_impl="tiled"
  t.log_every = 10
  t.nan_guard = True
  t.sharding_tolerance = 0.02       # max fraction of parameter bytes replicated over fsdp/tensor
  t.peak_flops_per_device = 0.0     # 0 = table (TPU/GPU) or measured (CPU)
  t.progress_bar = True
  t.debug_step_delay_s = 0.0        # tests only: sleep after each step (preemption tests)

  c.data = default_data_config()
  c.data.global_batch_size = t.get_ref("global_batch_size")

  c.checkpoint = ml_collections.ConfigDict({
      "every": 500, "keep": 3, "async_save": True, "export": True})

  # Per subtree: "" (random init), "orbax:<path>[#<prefix>]" (a run, checkpoint, step or
  # params export), "hf_clip:<dir>" or "hf_llama:<dir>" (a Hugging Face checkpoint directory).
  # `params_from` is the default for the subtrees left empty. `from_pretrained=DIR` (a
  # checkpoint or an HF Llava directory) is too, and also supplies the model, tokenizer and
  # template defaults the config leaves unset (trainer/pretrained.py, configs/finetune.py).
  c.init = ml_collections.ConfigDict({"params_from": "", "vision": "", "connector": "", "llm": "",
                                      "allow_random": False, "from_pretrained": ""})

  # Held-out evaluation inside the job (trainer/evaluation.py); benchmark "" = off.
  c.eval = evaluation.default_config()
  return c


def set_model(c: ml_collections.ConfigDict, *, llm: config_lib.LLMConfig,
              vision: config_lib.VisionConfig, connector: str) -> None:
  """Fills ``c.model`` from tower configs and a :data:`CONNECTOR_PRESETS` name."""
  if connector not in CONNECTOR_PRESETS:
    raise ValueError(f"connector preset {connector!r} is not one of {sorted(CONNECTOR_PRESETS)}")
  c.model.llm = dict_of(llm)
  c.model.vision = dict_of(vision)
  c.model.connector = dict_of(config_lib.ConnectorConfig(**CONNECTOR_PRESETS[connector]))
  c.model.image_token_id = llm.vocab_size


def stage1(c: ml_collections.ConfigDict) -> None:
  """LLaVA-1.5 pretraining (docs/method.md 2.1): connector only, lr 1e-3, batch 256, ``plain``."""
  c.train.stage = 1
  c.train.trainable = STAGE1_TRAINABLE
  c.train.optimizer.lr = 1e-3
  c.train.global_batch_size = 256
  c.train.steps = 2181
  c.data.builder = "llava_pretrain"
  c.data.template = "plain"
  c.data.pad_to_square = False
  c.data.group_by_length = False


def caption_max_length(c: ml_collections.ConfigDict, text_tokens: int = 128) -> int:
  """``data.max_length`` for stage-1 captions: the connector's visual tokens + BOS +
  ``text_tokens``, rounded up to a multiple of 128 (the connector registry's
  ``stage1_max_length``). LCS-558K's BLIP captions (a sentence) fit in 128 tokens; longer
  ones are truncated and counted (``data/truncated``). Padding every row to LLaVA's 2048
  would spend most of a stage-1 step on pad tokens, and would hide the speed-up of fewer
  visual tokens (``docs/method.md`` 1.7)."""
  mc = config_lib.model_config_from_dict(c.model)
  return connectors.connector(mc.connector.type).stage1_max_length(mc, text_tokens)


def resolve_max_length(c: ml_collections.ConfigDict) -> None:
  """Replaces ``data.max_length == AUTO_MAX_LENGTH`` by :func:`caption_max_length` of the
  final config, so a ``--config.model.connector.*`` override gets its own length."""
  if int(c.data.max_length) == AUTO_MAX_LENGTH:
    c.data.max_length = caption_max_length(c)


# Packed recipes: 2048-token rows (LLaVA's model_max_length). (stage, connector preset) ->
# (data.max_images_per_row M, global batch in ROWS, expected samples per row). M maximises
# real samples per padded FLOP of Vicuna-7B + ViT-L/14-336 on the documented length profile
# (``benchmarking/length_profile.py``: LCS-558K for stage 1, LLaVA-665K for stage 2; every
# image slot is encoded, used or not, so slots past the point where the row's tokens run out
# only cost ViT + connector work). Rows: the multiple of 16 whose expected samples per step
# are nearest (log scale) to LLaVA-1.5's 256 (stage 1) / 128 (stage 2). Computed with
# ``length_profile.choose_images_per_row`` (6000 samples, 32-row batches, look-ahead 64):
#   stage 1: acformer64 M=24, 23.2 samples/row, 98.5% tokens real; acformer144 M=12, 11.9,
#            97.4%; acformer256 M=7, 7.0, 95.4%; mlp2x_gelu M=3, 3.0, 87.6%
#   stage 2: acformer64 M=9, 6.6, 97.7%; acformer144 M=7, 5.2, 96.2%; acformer256 M=5, 4.0,
#            94.1%; mlp2x_gelu M=3, 2.1, 81.3% (unpacked 2048-rows: 19.5% / 40.1% real)
PACKED_ROWS = 2048
PACKING = {
    (1, "acformer64"): (24, 16, 23.15), (1, "acformer144"): (12, 16, 11.94),
    (1, "acformer256"): (7, 32, 7.00), (1, "mlp2x_gelu"): (3, 80, 3.00),
    (2, "acformer64"): (9, 16, 6.63), (2, "acformer144"): (7, 32, 5.23),
    (2, "acformer256"): (5, 32, 4.00), (2, "mlp2x_gelu"): (3, 64, 2.12),
}
EPOCH_SAMPLES = {1: 558_128, 2: 665_298}  # LCS-558K, llava_v1_5_mix665k


def pack_rows(c: ml_collections.ConfigDict, stage: int, connector: str) -> None:
  """Packs ``stage`` of the recipe into 2048-token rows per :data:`PACKING`: ``data.packing``,
  ``data.max_images_per_row``, ``train.global_batch_size`` in rows, and ``train.steps`` for
  one epoch at the expected samples per row."""
  key = (stage, connector)
  if key not in PACKING:  # the other baselines: the AcFormer preset with the same budget K
    key = (stage, "acformer" + connector[len(connector.rstrip("0123456789")):])
  if key not in PACKING:
    raise ValueError(f"no packed recipe for stage {stage} connector {connector!r}; known: "
                     f"{sorted(n for _, n in PACKING)} (and <type><K> of the same K)")
  m, rows, per_row = PACKING[key]
  c.data.packing = True
  c.data.max_length = PACKED_ROWS
  c.data.max_images_per_row = m
  c.data.group_by_length = False  # rows mix lengths; grouping would only hurt packing
  c.train.global_batch_size = rows
  c.train.steps = -(-EPOCH_SAMPLES[stage] // int(round(rows * per_row)))


def stage2(c: ml_collections.ConfigDict) -> None:
  """LLaVA-1.5 instruction tuning (docs/method.md 2.2): connector + LLM, lr 2e-5, batch 128,
  ``vicuna_v1``, padded images, modality-length grouping."""
  c.train.stage = 2
  c.train.trainable = STAGE2_TRAINABLE
  c.train.optimizer.lr = 2e-5
  c.train.global_batch_size = 128
  c.train.steps = 5198
  c.data.builder = "llava_instruct"
  c.data.template = "vicuna_v1"
  c.data.pad_to_square = True
  c.data.group_by_length = True


def vicuna_llava15(size: str, stage: int, connector: str,
                   remat_policy: str = "minimal") -> ml_collections.ConfigDict:
  """Vicuna-``size`` v1.5 + CLIP ViT-L/14-336 with a :data:`CONNECTOR_PRESETS` connector,
  LLaVA-1.5 stage ``stage`` (docs/method.md 2.1-2.2) packed into 2048-token rows (:func:`pack_rows`),
  FSDP over every chip (mesh ``(1, -1, 1)``), a checkpoint every 500 steps."""
  c = base_config()
  set_model(c, llm=vicuna(size), vision=clip_vit_l336(), connector=connector)
  if stage == 1:
    stage1(c)
  elif stage == 2:
    stage2(c)
  else:
    raise ValueError(f"stage must be 1 or 2, got {stage!r}")
  pack_rows(c, stage, connector)
  c.mesh.shape = (1, -1, 1)
  c.model.remat_policy = remat_policy
  c.checkpoint.every = 500
  return c


def family_llava15(llm: config_lib.LLMConfig, stage: int, connector: str,
                   remat_policy: str = "minimal") -> ml_collections.ConfigDict:
  """:func:`vicuna_llava15` with another LLM (e.g. ``families.llama3.PRESETS["8b"]``); stage
  2 uses the LLM family's chat template (``models/registry.py``)."""
  from acformer_jax.models import registry  # pylint: disable=import-outside-toplevel
  c = vicuna_llava15("7b", stage, connector, remat_policy)
  c.model.llm = dict_of(llm)
  c.model.image_token_id = llm.vocab_size
  if stage == 2:
    c.data.template = registry.family(llm.family).template
  return c


def vicuna(size: str) -> config_lib.LLMConfig:
  """Vicuna v1.5 7B / 13B (docs/method.md 3.1)."""
  if size == "7b":
    return config_lib.LLMConfig()
  if size == "13b":
    return config_lib.LLMConfig(hidden_size=5120, intermediate_size=13824, num_layers=40,
                                num_heads=40, num_kv_heads=40)
  raise ValueError(f"unknown Vicuna size {size!r}; expected '7b' or '13b'")


def clip_vit_l336() -> config_lib.VisionConfig:
  """openai/clip-vit-large-patch14-336, features from block -2 (docs/method.md 3.2)."""
  return config_lib.VisionConfig()


def parse_source(spec: str, subtree: str) -> Dict[str, str]:
  """``"orbax:/run#connector"`` -> ``{"kind": "orbax", "path": "/run", "prefix": "connector"}``."""
  if not spec:
    return {}
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in ("orbax", "hf_clip", "hf_llama") or not rest:
    raise ValueError(
        f"init.{subtree}={spec!r}: expected 'orbax:<path>[#<prefix>]', 'hf_clip:<dir>' or "
        "'hf_llama:<dir>'")
  path, _, prefix = rest.partition("#")
  if kind == "hf_clip" and subtree != "vision" or kind == "hf_llama" and subtree != "llm":
    raise ValueError(f"init.{subtree}={spec!r}: {kind} can only initialise "
                     f"{'vision' if kind == 'hf_clip' else 'llm'}")
  return {"kind": kind, "path": path, "prefix": prefix or subtree}


def init_sources(init_cfg) -> Dict[str, Dict[str, str]]:
  """Subtree -> parsed source (empty dict = random init)."""
  pre = init_cfg.get("from_pretrained") or ""
  return {name: (parse_source(init_cfg.get(name) or init_cfg.get("params_from") or "", name)
                 if init_cfg.get(name) or not pre else
                 {"kind": "pretrained", "path": pre, "prefix": name})
          for name in INIT_SUBTREES}


def unset_model(c: ml_collections.ConfigDict) -> None:
  """Leaves every model-shaped field unset (None) so ``init.from_pretrained`` supplies it:
  ``vision``, ``llm``, ``connector`` and ``image_token_id`` (``trainer/pretrained.py``)."""
  for section in ("vision", "llm", "connector"):
    sub = c.model[section]
    for k in list(sub.keys()):
      v = sub[k]
      kind = type(v) if v is not None else sub.get_type(k) if hasattr(sub, "get_type") else str
      sub[k] = config_dict.placeholder(tuple if k == "rope_scaling" else kind)
  c.model.image_token_id = config_dict.placeholder(int)

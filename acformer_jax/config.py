"""Model configuration: frozen dataclasses that Flax modules take as static fields.

Experiment files in ``configs/`` are ml_collections ``ConfigDict``s; their ``model``
field is turned into a :class:`ModelConfig` with :func:`model_config_from_dict`.
Spec: ``docs/method.md`` section 3 (model numbers) and 1.7 (visual token counts).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Vision tower (docs/method.md 3.2). Defaults: CLIP ViT-L/14-336.

  ``tower`` names the entry of the tower registry (``models/towers.py``: clip, siglip,
  siglip2, dinov2) that builds, converts and counts this tower; the last five fields are
  read only by the towers that have the feature.
  """
  tower: str = "clip"
  image_size: int = 336
  patch_size: int = 14
  num_channels: int = 3
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_layers: int = 24
  num_heads: int = 16
  layer_norm_eps: float = 1e-5
  select_layer: int = -2  # HF hidden_states indexing (LLaVA's mm_vision_select_layer)
  hidden_act: str = ""    # "" = the tower's own (clip quick_gelu, siglip gelu_pytorch_tanh, dinov2 gelu)
  position_grid: int = 0  # side of the stored position grid (0 = image_size // patch_size); dinov2 interpolates
  num_register_tokens: int = 0  # dinov2 with registers
  use_head: bool = False  # siglip: the attention-pooling head is in the checkpoint
  anchor_source: str = "auto"  # siglip: "probe" (needs use_head) | "received"; "auto" = probe if use_head

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_computed_layers(self) -> int:
    """Encoder blocks actually run: hidden_states[select_layer] needs this many."""
    n = self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer
    if not 1 <= n <= self.num_layers:
      raise ValueError(
          f"vision.select_layer={self.select_layer} must pick an encoder block output "
          f"(1..{self.num_layers} or -1..-{self.num_layers}); got block {n}")
    return n


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """The shared pre-norm decoder (docs/method.md 3.1). Defaults: Vicuna-7B v1.5.

  ``family`` names the entry of ``models/registry.py`` (llama, llama3, qwen2, mistral,
  gemma, ...) that maps it from/to HF, counts its FLOPs and gives its chat template. The
  fields after ``pad_token_id`` are the decoder options families differ by.
  """
  family: str = "llama"
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: Optional[int] = None
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # HF-style rope scaling as a sorted tuple of (key, value) pairs so the config stays
  # hashable, e.g. (("factor", 2.0), ("rope_type", "linear")).
  rope_scaling: Optional[Tuple[Tuple[str, Any], ...]] = None
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  bos_token_id: int = 1
  eos_token_id: int = 2
  pad_token_id: int = 0
  attention_bias: bool = False            # q/k/v projection biases (Qwen2)
  sliding_window: Optional[int] = None    # key j visible to query q iff q - j < window (Mistral)
  norm_unit_offset: bool = False          # RMSNorm scales by (1 + w) (Gemma)
  scale_embeddings: bool = False          # token embeddings * sqrt(hidden_size) (Gemma)
  mlp_activation: str = "silu"            # gated MLP activation: silu | gelu_tanh (GeGLU)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
  """Vision-language connector (docs/method.md 1.4-1.5, 1.8).

  ``type`` names an entry of the connector registry (``models/connectors.py``).
  ``num_queries`` is the visual-token budget K: 64/144/256 give 65/145/257 tokens for
  most baselines (CLS added; the C-Abstractor gives K). Ignored by ``linear`` and
  ``mlp2x_gelu`` (576 = all patches, CLS dropped).
  """
  type: str = "acformer"
  num_queries: int = 144
  depth: int = 6
  heads: int = 8
  dim_head: int = 64
  ff_mult: int = 4
  abstractor_depth: int = 3  # C-Abstractor RegStage depth
  # A LayerNorm (trained with the connector) on the tower features before the connector reads
  # them. Off for CLIP and for official checkpoints; for towers whose selected features are
  # small next to the connector's own updates (DINOv2-S: RMS 0.05 per element; docs/training.md
  # "DINOv2 demo").
  input_norm: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig = VisionConfig()
  llm: LLMConfig = LLMConfig()
  connector: ConnectorConfig = ConnectorConfig()
  image_token_id: int = 32000
  dtype: str = "float32"        # compute dtype
  param_dtype: str = "float32"  # master weights
  scan_layers: bool = True      # False unrolls the layer scan (same parameter layout)
  remat_policy: str = "none"    # see models/layers.py REMAT_POLICIES
  attention: str = "xla"        # xla | cudnn | splash | auto (see models/attention.py)


def _freeze(v):
  if isinstance(v, Mapping):
    return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
  if isinstance(v, list):
    return tuple(_freeze(x) for x in v)
  return v


def _build(cls, d: Optional[Mapping[str, Any]]):
  d = dict(d or {})
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
  if cls is LLMConfig and d.get("rope_scaling") is not None:
    d["rope_scaling"] = _freeze(d["rope_scaling"])
  return cls(**d)


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
  """Builds a ModelConfig from a (possibly nested) dict or ConfigDict."""
  d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
  sub = {k: d.pop(k, None) for k in ("vision", "llm", "connector")}
  top = _build(ModelConfig, d) if d else ModelConfig()
  return dataclasses.replace(
      top,
      vision=_build(VisionConfig, sub["vision"]),
      llm=_build(LLMConfig, sub["llm"]),
      connector=_build(ConnectorConfig, sub["connector"]))


def model_config_to_dict(cfg: ModelConfig) -> dict:
  d = dataclasses.asdict(cfg)
  rs = d["llm"]["rope_scaling"]
  if rs is not None:
    d["llm"]["rope_scaling"] = dict(rs)
  return d


def num_visual_tokens(cfg: ModelConfig) -> int:
  """Visual tokens the connector emits into the LLM sequence (docs/method.md 1.7, 1.8): the
  connector registry's count for ``connector.type`` (``models/connectors.py``)."""
  from acformer_jax.models import connectors  # pylint: disable=import-outside-toplevel
  return connectors.connector(cfg.connector.type).tokens(cfg)


def connector_types() -> Tuple[str, ...]:
  """The registered ``connector.type`` names."""
  from acformer_jax.models import connectors  # pylint: disable=import-outside-toplevel
  return connectors.connector_names()

"""What the families built on the shared decoder (``models/llama.py``) have in common:
the HF ``config.json`` fields they all use, their HF causal-LM key map and their FLOPs.

A family file calls :func:`config_from_hf` / :func:`config_to_hf` with its own defaults
and options, and usually takes :func:`keymap` and :func:`flops` as they are.
Spec: ``docs/method.md`` 3.1, 2.9; ``docs/jax_practices.md`` item 10 (FLOP counting rules).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from acformer_jax.config import LLMConfig
from acformer_jax.keymap import LINEAR, KeyMap, LayerStack, Rule

SUPPORTED_ROPE = ("default", "linear", "llama3")


def rope_from_hf(d: Mapping[str, Any]) -> Tuple[float, Optional[Tuple[Tuple[str, Any], ...]]]:
  """``(rope_theta, rope_scaling)`` from either the transformers >= 5 ``rope_parameters``
  or the older ``rope_theta`` + ``rope_scaling`` fields; scaling as sorted pairs."""
  params = dict(d.get("rope_parameters") or {})
  theta = float(params.pop("rope_theta", d.get("rope_theta", 10000.0)))
  if not params:
    params = dict(d.get("rope_scaling") or {})
  kind = params.pop("rope_type", params.pop("type", "default"))
  if kind not in SUPPORTED_ROPE:
    raise ValueError(f"LLM config: rope type {kind!r} is not supported; expected one of "
                     f"{SUPPORTED_ROPE}")
  if kind == "default":
    return theta, None
  needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
  missing = [k for k in needed if k not in params]
  if missing:
    raise ValueError(f"LLM config: rope type {kind!r} needs {missing}")
  params["rope_type"] = kind
  return theta, tuple(sorted(params.items()))


def require(d: Mapping, key: str, where: str):
  if key not in d:
    raise ValueError(f"{where}: config.json has no field {key!r}")
  return d[key]


def _first(v, default):
  v = v[0] if isinstance(v, (list, tuple)) and v else v
  return default if v is None else int(v)


def config_from_hf(d: Mapping[str, Any], family: str, *, model_type: str,
                   acts: Tuple[str, ...] = ("silu",), tie_default: bool = False,
                   head_dim_default: Optional[int] = None, bos=1, eos=2, pad=0,
                   **options) -> LLMConfig:
  """The shared fields of an HF causal-LM config; ``options`` set the decoder options
  (``attention_bias``, ``sliding_window``, ...). ``hidden_act`` must be one of ``acts``."""
  w = f"{family} config"
  if d.get("model_type", model_type) != model_type:
    raise ValueError(f"{w}: model_type={d.get('model_type')!r}, expected {model_type!r}")
  act = d.get("hidden_act", acts[0])
  if act not in acts:
    raise ValueError(f"{w}: hidden_act={act!r}, expected one of {acts}")
  theta, scaling = rope_from_hf(d)
  heads = int(require(d, "num_attention_heads", w))
  head_dim = d.get("head_dim", head_dim_default)
  return LLMConfig(
      family=family, vocab_size=int(require(d, "vocab_size", w)),
      hidden_size=int(require(d, "hidden_size", w)),
      intermediate_size=int(require(d, "intermediate_size", w)),
      num_layers=int(require(d, "num_hidden_layers", w)), num_heads=heads,
      num_kv_heads=int(d.get("num_key_value_heads") or heads),
      head_dim=None if head_dim is None else int(head_dim),
      rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      rope_theta=theta, rope_scaling=scaling,
      max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", tie_default)),
      bos_token_id=_first(d.get("bos_token_id"), bos), eos_token_id=_first(d.get("eos_token_id"), eos),
      pad_token_id=_first(d.get("pad_token_id"), pad), **options)


def config_to_hf(lc: LLMConfig, *, model_type: str, architecture: str, hidden_act: str = "silu",
                 **extra) -> dict:
  """An HF causal-LM config dict of ``lc`` (``extra``: the family's own fields)."""
  d = {"model_type": model_type, "architectures": [architecture],
       "vocab_size": lc.vocab_size, "hidden_size": lc.hidden_size,
       "intermediate_size": lc.intermediate_size, "num_hidden_layers": lc.num_layers,
       "num_attention_heads": lc.num_heads, "num_key_value_heads": lc.num_kv_heads,
       "head_dim": lc.resolved_head_dim, "rms_norm_eps": lc.rms_norm_eps,
       "rope_theta": lc.rope_theta, "max_position_embeddings": lc.max_position_embeddings,
       "tie_word_embeddings": lc.tie_word_embeddings, "bos_token_id": lc.bos_token_id,
       "eos_token_id": lc.eos_token_id, "pad_token_id": lc.pad_token_id,
       "hidden_act": hidden_act}
  d["rope_scaling"] = dict(lc.rope_scaling) if lc.rope_scaling else None
  d.update(extra)
  return d


_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
ROPE_BUFFERS = r"model\.(?:layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"


def keymap(lc: LLMConfig) -> KeyMap:
  """HF causal-LM keys (``model.*``, ``lm_head.weight``) of the shared decoder: q/k/v
  biases with ``attention_bias``; with a tied head a stored ``lm_head.weight`` is ignored."""
  rules = [Rule("model.embed_tokens.weight", "embed_tokens/embedding"),
           Rule("model.norm.weight", "norm/scale")]
  if not lc.tie_word_embeddings:
    rules.append(Rule("lm_head.weight", "lm_head/kernel", LINEAR))
  layer = ([Rule(f"model.layers.{{i}}.{n}.weight", f"{n}/scale")
            for n in ("input_layernorm", "post_attention_layernorm")]
           + [Rule(f"model.layers.{{i}}.{m}.weight", f"{m.replace('.', '/')}/kernel", LINEAR)
              for m in _PROJ])
  if lc.attention_bias:
    layer += [Rule(f"model.layers.{{i}}.self_attn.{p}.bias", f"self_attn/{p}/bias")
              for p in ("q_proj", "k_proj", "v_proj")]
  ignore = (ROPE_BUFFERS,) + ((r"lm_head\.weight",) if lc.tie_word_embeddings else ())
  return KeyMap.build(rules, layer, [LayerStack("layers", 0, lc.num_layers)], ignore)


def attended_pairs(seq_len: int, window: Optional[int]) -> float:
  """Query-key pairs of causal attention over ``seq_len`` tokens, counted as ``T^2 / 2``
  (the usual halving); a sliding window ``W < T`` removes the ``(T - W)^2 / 2`` beyond it."""
  t = float(seq_len)
  pairs = t * t / 2
  if window and window < seq_len:
    pairs -= (t - window) ** 2 / 2
  return pairs


def flops(lc: LLMConfig, seq_len: int, head_positions: int = 0) -> Tuple[float, float]:
  """``(weight-matmul FLOPs, attention FLOPs)`` of one forward pass over ``seq_len`` tokens
  (the LM head on ``head_positions`` of them when > 0). Per token and layer
  ``2 (D H hd + 2 D K hd + H hd D + 3 D F)``; attention ``4 H hd`` per attended pair."""
  d, h, k, hd, f = (lc.hidden_size, lc.num_heads, lc.num_kv_heads, lc.resolved_head_dim,
                    lc.intermediate_size)
  per_token_layer = 2.0 * (d * h * hd + 2 * d * k * hd + h * hd * d + 3 * d * f)
  head_rows = min(head_positions, seq_len) if head_positions > 0 else seq_len
  weights = seq_len * lc.num_layers * per_token_layer + head_rows * 2.0 * d * lc.vocab_size
  attention = lc.num_layers * 4.0 * attended_pairs(seq_len, lc.sliding_window) * h * hd
  return weights, attention

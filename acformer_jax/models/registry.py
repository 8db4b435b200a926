"""Registries of pluggable model parts, and the LLM family registry.

One pattern for every registry (``docs/seams.md``): an entry is a small frozen
dataclass of the callables and constants the rest of the code needs, registered from
its own file; ``models/__init__.py`` imports every entry file, so nothing is looked up
lazily by string. The config names an entry; :meth:`Registry.get` fails early, listing
the known names. Callers ask the registry (``family(lc.family).flops(...)``) and never
branch on a name.

An LLM family (``LLMConfig.family``) registers its decoder module, its config mapping
from and to HF ``config.json``, its HF causal-LM key map, its FLOP formula and its chat
defaults. See ``docs/models.md`` "Adding a family".
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Generic, Mapping, Optional, Tuple, TypeVar

from acformer_jax.config import LLMConfig
from acformer_jax.keymap import KeyMap

E = TypeVar("E")


class Registry(Generic[E]):
  """Name -> entry. ``kind`` names the config field in error messages.

  Args:
    kind: the config field (``llm.family``), used in the default error texts.
    same: ``(old, new) -> bool``; registering a name again with an entry this calls the
      same (a module imported twice) is a no-op instead of an error.
    missing: ``(name, names) -> str``, the text of the unknown-name error.
    sort: ``names()`` sorted (else in registration order).
  """

  def __init__(self, kind: str, *, same: Optional[Callable[[E, E], bool]] = None,
               missing: Optional[Callable[[str, Tuple[str, ...]], str]] = None,
               sort: bool = True):
    self.kind = kind
    self._same = same or (lambda old, new: old is new)
    self._missing = missing or (lambda name, names: f"{kind}={name!r} is not registered; "
                                f"known: {names}")
    self._sort = sort
    self._entries: Dict[str, E] = {}

  def register(self, name: str, entry: E, *, replace: bool = False) -> E:
    old = self._entries.get(name)
    if old is not None and not replace and not self._same(old, entry):
      raise ValueError(f"{self.kind}={name!r} is already registered")
    self._entries[name] = entry
    return entry

  def get(self, name: str) -> E:
    if name not in self._entries:
      raise ValueError(self._missing(name, self.names()))
    return self._entries[name]

  def names(self) -> Tuple[str, ...]:
    return tuple(sorted(self._entries) if self._sort else self._entries)

  def entries(self) -> Tuple[E, ...]:
    return tuple(self._entries[n] for n in self.names())

  def __contains__(self, name: str) -> bool:
    return name in self._entries


@dataclasses.dataclass(frozen=True)
class Family:
  """One LLM family.

  Attributes:
    name: the ``LLMConfig.family`` value.
    hf_model_type: ``model_type`` of its HF causal-LM ``config.json``.
    hf_architecture: its HF causal-LM class name (``LlamaForCausalLM``).
    from_hf: HF config dict -> ``LLMConfig`` (with ``family=name``); raises ``ValueError``
      naming the field on settings it cannot honour.
    to_hf: ``LLMConfig`` -> HF config dict (loads with ``AutoConfig.for_model``).
    keymap: ``LLMConfig`` -> ``KeyMap`` from HF causal-LM keys (``model.*``,
      ``lm_head.weight``) to the decoder's param paths.
    flops: ``(LLMConfig, seq_len, head_positions) -> (weight FLOPs, attention FLOPs)`` of
      one forward pass (``trainer/flops.py`` counting rules).
    decoder: ``(LLMConfig, **tower_options) -> flax Module`` with the ``LlamaModel``
      interface (``embed``, ``__call__``, docs/design.md).
    template: default chat template name (``data/templates.py``).
    stop_tokens: token strings that end an assistant turn (generation stops on them).
    matches: optional predicate on the HF config dict to pick this family among several
      sharing ``hf_model_type`` (Llama-3 vs LLaMA-2 both say ``llama``).
  """
  name: str
  hf_model_type: str
  hf_architecture: str
  from_hf: Callable[[Mapping[str, Any]], LLMConfig]
  to_hf: Callable[[LLMConfig], dict]
  keymap: Callable[[LLMConfig], KeyMap]
  flops: Callable[[LLMConfig, int, int], Tuple[float, float]]
  decoder: Callable[..., Any]
  template: str = "plain"
  stop_tokens: Tuple[str, ...] = ()
  matches: Optional[Callable[[Mapping[str, Any]], bool]] = None


FAMILIES: Registry[Family] = Registry("llm.family")


def register_family(entry: Family, *, replace: bool = False) -> Family:
  return FAMILIES.register(entry.name, entry, replace=replace)


def family(name: str) -> Family:
  """The registered family ``name`` (``ValueError`` listing the known ones otherwise)."""
  return FAMILIES.get(name)


def family_for_hf(d: Mapping[str, Any], where: str = "config.json") -> Family:
  """The family of an HF causal-LM config dict: by ``model_type`` (default ``llama``), then
  by the entries' ``matches`` predicates (an entry without one is the fallback)."""
  model_type = d.get("model_type") or "llama"
  cands = [f for f in FAMILIES.entries() if f.hf_model_type == model_type]
  if not cands:
    known = sorted({f.hf_model_type for f in FAMILIES.entries()})
    raise ValueError(f"{where}: model_type={model_type!r} has no registered LLM family; "
                     f"known model types: {known}")
  picked = [f for f in cands if f.matches is not None and f.matches(d)]
  picked = picked or [f for f in cands if f.matches is None]
  if len(picked) != 1:
    raise ValueError(f"{where}: model_type={model_type!r} matches families "
                     f"{[f.name for f in (picked or cands)]}; name one explicitly")
  return picked[0]


def llm_config_from_hf(d: Mapping[str, Any], family_name: Optional[str] = None,
                       where: str = "config.json") -> LLMConfig:
  """``LLMConfig`` of an HF causal-LM config (family detected unless named)."""
  fam = family(family_name) if family_name else family_for_hf(d, where)
  return fam.from_hf(d)


def decoder(lc: LLMConfig, **options):
  """The decoder module of ``lc.family`` (``options``: ``layers.tower_options``)."""
  return family(lc.family).decoder(lc, **options)

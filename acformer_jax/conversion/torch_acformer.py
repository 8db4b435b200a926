"""A PyTorch reference of the official AcFormer connector, for the conversion self-check.

Spec: ``docs/method.md`` 1.3 (anchor search), 1.4 (the Perceiver-Resampler variant),
1.5 (``Sequential(resampler, Linear, GELU, Linear)`` and its state-dict names). The
module names reproduce the official state dict (``0.layers.{i}.0.to_kv.weight``,
``0.layers.{i}.1.3.weight``, ``1.weight``, ...) so a checkpoint's tensors load into it
by their own names, independently of our key maps.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn


def anchor_indices(cls_rows: torch.Tensor, num_anchors: int) -> List[int]:
  """Sorted anchor positions for one image (docs/method.md 1.3; 0 = CLS, patch p -> p + 1).

  Each head in turn adds its ``num_anchors // heads`` best patches not taken yet;
  ties go to the higher index (the official ascending argsort read from the end).
  """
  heads = cls_rows.shape[0]
  quota = num_anchors // heads
  taken = {0}
  for h in range(heads):
    ranking = torch.argsort(cls_rows[h].float(), stable=True).tolist()[::-1]
    added = 0
    for p in ranking:
      if added == quota:
        break
      if p + 1 not in taken:
        taken.add(p + 1)
        added += 1
  return sorted(taken)


class CrossAttention(nn.Module):
  """Latents attend over the normalised media only; no biases (docs/method.md 1.4)."""

  def __init__(self, dim: int, heads: int, dim_head: int):
    super().__init__()
    inner = heads * dim_head
    self.heads, self.scale = heads, dim_head ** -0.5
    self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.to_q = nn.Linear(dim, inner, bias=False)
    self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
    self.to_out = nn.Linear(inner, dim, bias=False)

  def forward(self, media, latents):
    media, latents = self.norm_media(media), self.norm_latents(latents)
    b, nq, _ = latents.shape
    heads = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)
    q = heads(self.to_q(latents) * self.scale)
    k, v = (heads(t) for t in self.to_kv(media).chunk(2, dim=-1))
    probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    return self.to_out((probs @ v).transpose(1, 2).reshape(b, nq, -1))


class Resampler(nn.Module):
  """``depth`` x (cross-attention, LN -> Linear -> GELU -> Linear), then a LayerNorm."""

  def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int,
               num_latents: int = 144):
    super().__init__()
    self.latents = nn.Parameter(torch.zeros(num_latents, dim))  # unused by AcFormer
    self.layers = nn.ModuleList(
        nn.ModuleList([CrossAttention(dim, heads, dim_head),
                       nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False),
                                     nn.GELU(), nn.Linear(dim * ff_mult, dim, bias=False))])
        for _ in range(depth))
    self.norm = nn.LayerNorm(dim)

  def forward(self, media, queries):
    x = queries
    for attn, ff in self.layers:
      x = attn(media, x) + x
      x = ff(x) + x
    return self.norm(x)


def build_projector(dim: int, d_llm: int, depth: int, heads: int, dim_head: int,
                    ff_mult: int, num_latents: int = 144) -> nn.Sequential:
  """The official ``mm_projector``: resampler (index 0), Linear (1), GELU, Linear (3)."""
  return nn.Sequential(Resampler(dim, depth, heads, dim_head, ff_mult, num_latents),
                       nn.Linear(dim, d_llm), nn.GELU(), nn.Linear(d_llm, d_llm))


def connector_forward(projector: nn.Sequential, features: torch.Tensor, cls_attn: torch.Tensor,
                      num_anchors: int) -> torch.Tensor:
  """Anchors per image -> resampler queries -> MLP: ``[B, K+1, d_llm]`` (docs/method.md 1.1, 1.6)."""
  queries = torch.stack([features[b, anchor_indices(cls_attn[b], num_anchors)]
                         for b in range(features.shape[0])])
  x = projector[0](features, queries)
  return projector[3](projector[2](projector[1](x)))

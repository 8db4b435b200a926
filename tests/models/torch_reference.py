"""A small PyTorch reference of the official AcFormer connector (``docs/method.md`` 1.3-1.5).

Written from the spec's description of the official code's semantics: the per-sample
anchor loop that grows a top-(m+c) window of each head's ascending argsort, the
Perceiver-Resampler variant (keys/values from the media only, no biases, exact GELU)
and the ``nn.Sequential(resampler, Linear, GELU, Linear)`` projector whose state
dict carries the official key layout (``0.*`` resampler, ``1.*``/``3.*`` MLP).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def official_select(cls_rows, num_anchors: int):
  """The official per-sample loop (docs/method.md 1.3) on one image.

  Args:
    cls_rows: ``[heads, num_patches]`` CLS attention over patches (numpy or torch).
    num_anchors: K.

  Returns:
    Sorted python list of token positions (0 = CLS, patch p -> p + 1).
  """
  rows = torch.as_tensor(np.asarray(cls_rows, np.float32))
  heads = rows.shape[0]
  per_head = num_anchors // heads
  chosen = {0}
  for h in range(heads):
    order = torch.argsort(rows[h], stable=True).tolist()  # ascending; best at the end
    target = 1 + per_head * (h + 1)
    extra = 0
    while True:
      window = {p + 1 for p in order[len(order) - (per_head + extra):]}
      if len(chosen | window) >= target:
        chosen |= window
        break
      extra += 1
  return sorted(chosen)


class PerceiverAttention(nn.Module):
  """Cross-attention of the latents over the media only (docs/method.md 1.4)."""

  def __init__(self, dim, dim_head=64, heads=8):
    super().__init__()
    self.scale = dim_head ** -0.5
    self.heads = heads
    inner = dim_head * heads
    self.norm_media = nn.LayerNorm(dim)
    self.norm_latents = nn.LayerNorm(dim)
    self.to_q = nn.Linear(dim, inner, bias=False)
    self.to_kv = nn.Linear(dim, inner * 2, bias=False)
    self.to_out = nn.Linear(inner, dim, bias=False)

  def forward(self, media, latents):
    x = self.norm_media(media)
    lat = self.norm_latents(latents)
    q = self.to_q(lat) * self.scale
    k, v = self.to_kv(x).chunk(2, dim=-1)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    sim = q @ k.transpose(-1, -2)
    sim = sim - sim.amax(dim=-1, keepdim=True).detach()
    out = sim.softmax(dim=-1) @ v
    out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    return self.to_out(out)


def feed_forward(dim, mult=4):
  return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                       nn.Linear(dim * mult, dim, bias=False))


class PerceiverResampler(nn.Module):
  """The resampler; ``dynamic_query`` (set from outside) replaces the latents."""

  def __init__(self, dim, depth=6, dim_head=64, heads=8, num_latents=144, ff_mult=4):
    super().__init__()
    self.latents = nn.Parameter(torch.randn(num_latents, dim))
    self.layers = nn.ModuleList([
        nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
        for _ in range(depth)])
    self.norm = nn.LayerNorm(dim)
    self.dynamic_query = None

  def forward(self, media):
    if self.dynamic_query is not None:
      latents = self.dynamic_query
    else:
      latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
    for attn, ff in self.layers:
      latents = attn(media, latents) + latents
      latents = ff(latents) + latents
    return self.norm(latents)


def acformer_projector(dim_vision, dim_llm, **resampler_kw):
  """``mm_projector`` of the official code: Sequential(resampler, Linear, GELU, Linear)."""
  return nn.Sequential(PerceiverResampler(dim_vision, **resampler_kw),
                       nn.Linear(dim_vision, dim_llm), nn.GELU(), nn.Linear(dim_llm, dim_llm))


def acformer_connector(projector, features, cls_attn, num_anchors):
  """Official encode path: per-sample anchors, gather, resampler + MLP (docs/method.md 1.1, 1.6).

  Args:
    projector: from :func:`acformer_projector`.
    features: ``[B, N+1, Dv]`` torch.
    cls_attn: ``[B, H, N]`` torch.
    num_anchors: K.
  """
  queries = []
  for b in range(features.shape[0]):
    idx = torch.tensor(official_select(cls_attn[b].detach().cpu().numpy(), num_anchors))
    queries.append(features[b, idx])
  projector[0].dynamic_query = torch.stack(queries)
  try:
    return projector(features)
  finally:
    projector[0].dynamic_query = None


def _t(x):
  return np.asarray(x.detach().cpu().numpy(), np.float32)


def flax_params_from_official(state_dict, depth: int, prefix: str = ""):
  """Maps an official AcFormer ``mm_projector`` state dict to our connector params.

  ``prefix`` is e.g. ``"model.mm_projector."``. The fused ``to_kv`` splits into
  ``to_k`` (first half of its rows) and ``to_v``; per-layer tensors stack on a
  leading ``layers`` axis; the unused ``latents`` are dropped.
  """
  sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

  def get(key):
    if key not in sd:
      raise KeyError(f"official AcFormer state dict: missing key {prefix + key!r}")
    return _t(sd[key])

  def ln(key):
    return {"scale": get(key + ".weight"), "bias": get(key + ".bias")}

  per_layer = []
  for i in range(depth):
    p = f"0.layers.{i}."
    kv = get(p + "0.to_kv.weight")
    half = kv.shape[0] // 2
    per_layer.append({
        "norm_media": ln(p + "0.norm_media"),
        "norm_latents": ln(p + "0.norm_latents"),
        "to_q": {"kernel": get(p + "0.to_q.weight").T},
        "to_k": {"kernel": kv[:half].T},
        "to_v": {"kernel": kv[half:].T},
        "to_out": {"kernel": get(p + "0.to_out.weight").T},
        "ff_norm": ln(p + "1.0"),
        "ff_in": {"kernel": get(p + "1.1.weight").T},
        "ff_out": {"kernel": get(p + "1.3.weight").T},
    })
  layers = {}
  for name in per_layer[0]:
    layers[name] = {leaf: np.stack([l[name][leaf] for l in per_layer])
                    for leaf in per_layer[0][name]}
  return {
      "resampler": {"layers": layers, "norm": ln("0.norm")},
      "projector": {
          "linear_1": {"kernel": get("1.weight").T, "bias": get("1.bias")},
          "linear_2": {"kernel": get("3.weight").T, "bias": get("3.bias")},
      },
  }


# --- C-Abstractor baseline (docs/method.md 1.8: timm RegStage blocks as Honeybee configures them) ---
class LayerNorm2d(nn.LayerNorm):
  """Channel-wise LayerNorm on NCHW (timm 0.6.13 ``LayerNormAct2d`` in ConvNormAct, eps 1e-5)."""

  def __init__(self, channels):
    super().__init__(channels, eps=1e-5)

  def forward(self, x):
    x = x.permute(0, 2, 3, 1)
    x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
    return x.permute(0, 3, 1, 2)


class RegBlock(nn.Module):
  """Bottleneck: 1x1 -> 3x3 depthwise -> SE -> 1x1 (+LN2d), identity shortcut, SiLU."""

  def __init__(self, c, se_ratio=0.25):
    super().__init__()
    se = int(round(c * se_ratio))
    self.conv1, self.norm1 = nn.Conv2d(c, c, 1, bias=False), LayerNorm2d(c)
    self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
    self.norm2 = LayerNorm2d(c)
    self.se_fc1, self.se_fc2 = nn.Conv2d(c, se, 1), nn.Conv2d(se, c, 1)
    self.conv3, self.norm3 = nn.Conv2d(c, c, 1, bias=False), LayerNorm2d(c)

  def forward(self, x):
    act = nn.functional.silu
    h = act(self.norm1(self.conv1(x)))
    h = act(self.norm2(self.conv2(h)))
    gate = self.se_fc2(act(self.se_fc1(h.mean((2, 3), keepdim=True))))
    h = self.norm3(self.conv3(h * gate.sigmoid()))
    return act(h + x)


class CAbstractorConnector(nn.Module):
  """(RegStage -> AdaptiveAvgPool2d -> RegStage) tokens (no CLS) -> mlp2x_gelu."""

  def __init__(self, c, d_llm, depth, out_grid):
    super().__init__()
    self.s1 = nn.Sequential(*[RegBlock(c) for _ in range(depth)])
    self.pool = nn.AdaptiveAvgPool2d(out_grid)
    self.s2 = nn.Sequential(*[RegBlock(c) for _ in range(depth)])
    self.mlp = nn.Sequential(nn.Linear(c, d_llm), nn.GELU(), nn.Linear(d_llm, d_llm))

  def forward(self, features):
    b, n, c = features.shape
    g = int(round((n - 1) ** 0.5))
    x = features[:, 1:].transpose(1, 2).reshape(b, c, g, g)
    x = self.s2(self.pool(self.s1(x))).flatten(2).transpose(1, 2)
    return self.mlp(x)


def flax_params_from_c_abstractor(module: CAbstractorConnector):
  """Our ``abstractor/{s1_b*,s2_b*}`` + ``projector`` params from the torch module."""
  def block(m):
    ln = lambda n: {"scale": _t(n.weight), "bias": _t(n.bias)}
    return {
        "conv1": {"kernel": _t(m.conv1.weight)[:, :, 0, 0].T}, "norm1": ln(m.norm1),
        "conv2": {"kernel": _t(m.conv2.weight).transpose(2, 3, 1, 0)}, "norm2": ln(m.norm2),
        "se_fc1": {"kernel": _t(m.se_fc1.weight)[:, :, 0, 0].T, "bias": _t(m.se_fc1.bias)},
        "se_fc2": {"kernel": _t(m.se_fc2.weight)[:, :, 0, 0].T, "bias": _t(m.se_fc2.bias)},
        "conv3": {"kernel": _t(m.conv3.weight)[:, :, 0, 0].T}, "norm3": ln(m.norm3),
    }
  abstractor = {}
  for stage in ("s1", "s2"):
    for i, m in enumerate(getattr(module, stage)):
      abstractor[f"{stage}_b{i + 1}"] = block(m)
  mlp = module.mlp
  return {"abstractor": abstractor, "projector": {
      "linear_1": {"kernel": _t(mlp[0].weight).T, "bias": _t(mlp[0].bias)},
      "linear_2": {"kernel": _t(mlp[2].weight).T, "bias": _t(mlp[2].bias)}}}

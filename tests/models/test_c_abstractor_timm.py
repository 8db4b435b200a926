"""The C-Abstractor vs a torch restatement of the official build with timm 0.6.13's layers.

The official AcFormer builds ``CAbstractor(1024, 3, 144)``: RegStage(depth) ->
AdaptiveAvgPool2d -> RegStage(depth) on the patch grid (CLS dropped), 144 tokens, then
LLaVA's mlp2x_gelu. timm's RegStage blocks are ``Bottleneck`` s whose convs are
``ConvNormAct``; with ``norm_layer=LayerNorm2d`` timm swaps in ``LayerNormAct2d`` (eps 1e-5).
The classes below restate those layers with timm's module names (``conv1.conv``,
``conv1.bn``, ``se.fc1``...), so the parameter mapping is the one a real checkpoint needs.
"""
import dataclasses

import jax
import numpy as np
import torch
from torch import nn

from acformer_jax import config as C
from acformer_jax.models import Connector

VISION = C.VisionConfig(image_size=112, patch_size=14, hidden_size=32, intermediate_size=64,
                        num_layers=2, num_heads=4)  # 8x8 patches
LLM = C.LLMConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_layers=1,
                  num_heads=4, num_kv_heads=4)


class LayerNormAct2d(nn.LayerNorm):
  """timm ``LayerNormAct2d``: channel LayerNorm on NCHW (default eps 1e-5), then act."""

  def __init__(self, c, apply_act=True, act_layer=nn.SiLU):
    super().__init__(c, eps=1e-5)
    self.act = act_layer() if apply_act else nn.Identity()

  def forward(self, x):
    x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                 self.bias, self.eps).permute(0, 3, 1, 2)
    return self.act(x)


class ConvNormAct(nn.Module):
  def __init__(self, cin, cout, k, groups=1, apply_act=True):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
    self.bn = LayerNormAct2d(cout, apply_act=apply_act)

  def forward(self, x):
    return self.bn(self.conv(x))


class SEModule(nn.Module):
  def __init__(self, c, rd):
    super().__init__()
    self.fc1, self.bn, self.act, self.fc2 = nn.Conv2d(c, rd, 1), nn.Identity(), nn.SiLU(), \
        nn.Conv2d(rd, c, 1)

  def forward(self, x):
    s = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
    return x * s.sigmoid()


class Bottleneck(nn.Module):
  """RegNet bottleneck: bottle_ratio 1, group_size 1, se_ratio 0.25, identity shortcut."""

  def __init__(self, c, se_ratio=0.25):
    super().__init__()
    self.conv1 = ConvNormAct(c, c, 1)
    self.conv2 = ConvNormAct(c, c, 3, groups=c)
    self.se = SEModule(c, int(round(c * se_ratio)))
    self.conv3 = ConvNormAct(c, c, 1, apply_act=False)
    self.act3 = nn.SiLU()

  def forward(self, x):
    return self.act3(self.conv3(self.se(self.conv2(self.conv1(x)))) + x)


class OfficialCAbstractor(nn.Module):
  def __init__(self, c, d_llm, depth, num_queries):
    super().__init__()
    hw = int(num_queries ** 0.5)
    self.net = nn.Sequential(nn.Sequential(*[Bottleneck(c) for _ in range(depth)]),
                             nn.AdaptiveAvgPool2d((hw, hw)),
                             nn.Sequential(*[Bottleneck(c) for _ in range(depth)]))
    self.readout = nn.Sequential(nn.Linear(c, d_llm), nn.GELU(), nn.Linear(d_llm, d_llm))

  def forward(self, features):  # [B, 1 + N, C], CLS first
    x = features[:, 1:]
    b, n, c = x.shape
    hw = int(n ** 0.5)
    x = self.net(x.transpose(1, 2).reshape(b, c, hw, hw))
    return self.readout(x.flatten(2).transpose(1, 2))


def _t(x):
  return x.detach().numpy().astype(np.float32)


def flax_params(m: OfficialCAbstractor):
  def block(bl):
    ln = lambda cna: {"scale": _t(cna.bn.weight), "bias": _t(cna.bn.bias)}  # pylint: disable=unnecessary-lambda-assignment
    return {"conv1": {"kernel": _t(bl.conv1.conv.weight)[:, :, 0, 0].T}, "norm1": ln(bl.conv1),
            "conv2": {"kernel": _t(bl.conv2.conv.weight).transpose(2, 3, 1, 0)},
            "norm2": ln(bl.conv2),
            "se_fc1": {"kernel": _t(bl.se.fc1.weight)[:, :, 0, 0].T, "bias": _t(bl.se.fc1.bias)},
            "se_fc2": {"kernel": _t(bl.se.fc2.weight)[:, :, 0, 0].T, "bias": _t(bl.se.fc2.bias)},
            "conv3": {"kernel": _t(bl.conv3.conv.weight)[:, :, 0, 0].T}, "norm3": ln(bl.conv3)}
  abstractor = {f"{s}_b{i + 1}": block(bl) for s, stage in (("s1", m.net[0]), ("s2", m.net[2]))
                for i, bl in enumerate(stage)}
  r = m.readout
  return {"abstractor": abstractor, "projector": {
      "linear_1": {"kernel": _t(r[0].weight).T, "bias": _t(r[0].bias)},
      "linear_2": {"kernel": _t(r[2].weight).T, "bias": _t(r[2].bias)}}}


def test_c_abstractor_matches_timm_restatement():
  conn = C.ConnectorConfig(type="c_abstractor", num_queries=16, abstractor_depth=2)
  cfg = C.ModelConfig(vision=VISION, llm=LLM, connector=conn)
  torch.manual_seed(0)
  ref = OfficialCAbstractor(VISION.hidden_size, LLM.hidden_size, 2, 16).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "bn" in name or "bias" in name:
        p.add_(0.3 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  feats = (3 * rng.standard_normal((2, 65, VISION.hidden_size))).astype(np.float32)
  attn = np.full((2, 4, 64), 1 / 64, np.float32)
  got = np.asarray(jax.jit(Connector(cfg).apply)({"params": flax_params(ref)}, feats, attn))
  with torch.no_grad():
    want = ref(torch.from_numpy(feats)).numpy()
  assert got.shape == want.shape == (2, 16, LLM.hidden_size)  # K tokens, no CLS
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # eps matters at this scale: the eps-1e-6 reading differs visibly.
  from acformer_jax.models import abstractor  # pylint: disable=import-outside-toplevel
  old = abstractor.LN2D_EPS
  try:
    abstractor.LN2D_EPS = 1e-6
    other = np.asarray(Connector(dataclasses.replace(cfg)).apply({"params": flax_params(ref)},
                                                                  feats * 1e-3, attn))
    abstractor.LN2D_EPS = old
    base = np.asarray(Connector(cfg).apply({"params": flax_params(ref)}, feats * 1e-3, attn))
  finally:
    abstractor.LN2D_EPS = old
  assert np.abs(other - base).max() > 1e-4

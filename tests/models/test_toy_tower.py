"""The one-file claim of the tower and connector registries (issue #17): a vision tower and a
connector registered from inside this test file, with no edit anywhere else, run through
the model forward and sharded train steps, and are validated and counted by the FLOPs code.

The toy tower is a patch conv plus one shared encoder block whose anchor source is a
learned per-head probe over the patches (as a CLS-less tower would define it); the toy
connector hands the summary token and the K patches with the highest head-averaged anchor
score (kept in raster order) to the projector.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax import config as C
from acformer_jax.models import connectors, towers
from acformer_jax.models.anchors import gather_tokens
from acformer_jax.models.layers import DEFAULT_KERNEL_INIT, partitioned, to_dtype
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.models.vit import TowerModule, VisionBlock, check_pixels, patch_embedding
from acformer_jax.trainer import flops, state as S
from tests.trainer import tiny

TOWER, CONNECTOR = "toy_probe", "toy_topk"
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


# ---- the whole tower: module, entry ------------------------------------------------------
class ToyTower(TowerModule):
  """``pixels [B,S,S,C] -> (features [B,N+1,D] (token 0: patch mean), probe [B,H,N])``."""

  @nn.compact
  def __call__(self, pixel_values):
    cfg, dt = self.config, to_dtype(self.dtype)
    check_pixels(cfg, pixel_values, "ToyTower")
    x = patch_embedding(cfg, pixel_values, use_bias=True, dtype=dt,
                        param_dtype=to_dtype(self.param_dtype))
    x, _ = VisionBlock(cfg, dtype=self.dtype, param_dtype=self.param_dtype, anchor_row="received",
                       num_prefix=0, attention=self.attention, name="block")(x)
    probe = self.param("probe", partitioned(DEFAULT_KERNEL_INIT, (None, "vit_embed")),
                       (cfg.num_heads, cfg.hidden_size), to_dtype(self.param_dtype))
    scores = jnp.einsum("bnd,hd->bhn", x.astype(jnp.float32), probe.astype(jnp.float32))
    return (jnp.concatenate([x.mean(1, keepdims=True), x], axis=1),
            jax.nn.softmax(scores, axis=-1))


def _tower_flops(vc):
  n, d = vc.num_patches, vc.hidden_size
  return (2.0 * n * vc.patch_size ** 2 * vc.num_channels * d
          + towers.transformer_block_flops(n, d, vc.intermediate_size) + 2.0 * n * d * vc.num_heads)


def _tower_validate(vc):
  return [] if vc.num_layers == 1 else [f"model.vision.num_layers={vc.num_layers}: {TOWER} has 1"]


TOY_TOWER = towers.register_tower(towers.Tower(
    name=TOWER, module=ToyTower, hf_model_types=(), from_hf_config=None, to_hf_config=None,
    keymap=None, hf_prefix=lambda keys: "", flops=_tower_flops, image_mean=MEAN, image_std=STD,
    anchor_source="a learned per-head probe over the patches", has_cls=False,
    validate=_tower_validate), replace=True)


# ---- the whole connector: spec -----------------------------------------------------------
def _topk(ctx):
  k = ctx.config.connector.num_queries
  _, idx = jax.lax.top_k(ctx.anchor_attn.mean(axis=1), k)
  idx = jnp.sort(idx, axis=-1) + 1
  idx = jnp.concatenate([jnp.zeros_like(idx[:, :1]), idx], axis=1)
  return gather_tokens(ctx.features, idx)


def _connector_validate(mc):
  k, n = mc.connector.num_queries, mc.vision.num_patches
  return [] if 1 <= k <= n else [f"connector.num_queries={k} must be in 1..{n} for {CONNECTOR}"]


TOY_CONNECTOR = connectors.register_connector(connectors.ConnectorSpec(
    CONNECTOR, _topk, lambda mc: mc.connector.num_queries + 1, validate=_connector_validate,
    uses_anchor_attn=True), replace=True)
# -----------------------------------------------------------------------------------------

VISION = C.VisionConfig(tower=TOWER, image_size=28, patch_size=7, hidden_size=16,
                        intermediate_size=32, num_layers=1, num_heads=2)
TOY_MODEL = C.ModelConfig(vision=VISION, llm=tiny.LLM, image_token_id=64,
                          connector=C.ConnectorConfig(type=CONNECTOR, num_queries=4))


def test_forward_and_train_steps_with_the_registered_tower_and_connector():
  assert C.num_visual_tokens(TOY_MODEL) == tiny.NV == 5  # tiny.batch's image slots
  model = MultimodalLM(TOY_MODEL)
  init = S.init_params_fn(model, TOY_MODEL)
  host = jax.device_get(jax.jit(lambda r: nn.unbox(init(r)))(jax.random.key(0)))
  assert set(host["vision"]) == {"patch_embedding", "block", "probe"}
  # The connector's tokens are the projector applied to [summary, top-4 patches by probe].
  data = tiny.batch(1, config=TOY_MODEL)
  images = data["images"][:2, 0]
  # (each apply compiled as one program: eagerly every op compiles on its own)
  visual = jax.jit(lambda p, x: model.apply({"params": p}, x, method=MultimodalLM.encode_images))(
      host, images)
  feats, probe = jax.jit(lambda p, x: ToyTower(VISION).apply({"params": p}, x))(host["vision"],
                                                                                images)
  top = np.sort(np.argsort(-np.asarray(probe).mean(1), axis=-1)[:, :4], axis=-1) + 1
  picked = np.take_along_axis(np.asarray(feats), np.c_[np.zeros((2, 1), int), top][..., None], 1)
  projector = connectors.MlpProjector(tiny.LLM.hidden_size)
  want = jax.jit(lambda p, x: projector.apply({"params": p}, x))(host["connector"]["projector"],
                                                                 picked)
  np.testing.assert_allclose(visual, want, atol=1e-5, rtol=0)
  # Sharded train steps: finite, the loss goes down.
  losses = tiny.sharded_train_losses(model, TOY_MODEL, host, data)
  assert losses[-1] < losses[0]
  # FLOPs and validation ask the registries.
  assert flops.vit_forward_flops(VISION) == _tower_flops(VISION)
  assert flops.connector_train_flops(TOY_MODEL) == TOY_CONNECTOR.train_flops(TOY_MODEL)
  assert towers.validate(VISION) == [] and connectors.validate(TOY_MODEL) == []
  assert towers.tower(TOWER) is TOY_TOWER and connectors.connector(CONNECTOR) is TOY_CONNECTOR


def test_registries_reject_a_second_entry_under_the_same_name():
  with pytest.raises(ValueError, match=f"vision.tower='{TOWER}' is already registered"):
    towers.register_tower(towers.Tower(**{**TOY_TOWER.__dict__, "module": VisionBlock}))
  assert towers.register_tower(TOY_TOWER) is TOY_TOWER  # the same entry again: a no-op
  with pytest.raises(ValueError, match=f"connector.type='{CONNECTOR}' is already registered"):
    connectors.register_connector(connectors.ConnectorSpec(CONNECTOR, lambda ctx: None,
                                                           lambda mc: 1))
  with pytest.raises(ValueError, match="vision.tower='nope' is not a registered tower; known: "):
    towers.tower("nope")
  with pytest.raises(ValueError, match="connector.type='nope' is not one of"):
    connectors.connector("nope")

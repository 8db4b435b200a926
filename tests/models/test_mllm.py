"""MultimodalLM (docs/method.md 1.1, 2.6): LLaVA parity, frozen ViT, sharded training step."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from acformer_jax import config as C
from acformer_jax import sharding
from acformer_jax.conversion import KeyMap, Rule, TensorSource, abstract_params, load_params
from acformer_jax.conversion.keymaps import LINEAR, clip_vision_keymap, llama_keymap
from acformer_jax.models import MultimodalLM

import tiny_hf

IMAGE_ID = 95
VISION = C.VisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                        num_layers=3, num_heads=4, select_layer=-2)   # 16 patches, 2 blocks run
LLM = C.LLMConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128)
NV = VISION.num_patches


def _llava_keymap(vision: C.VisionConfig, llm: C.LLMConfig) -> KeyMap:
  """Keys of a saved ``LlavaForConditionalGeneration`` (legacy layout, docs/method.md 2.9)."""
  tower = clip_vision_keymap(vision.num_layers, vision.num_computed_layers)
  text = llama_keymap(llm.num_layers, llm.tie_word_embeddings).rename_hf(
      lambda k: "language_model." + k)
  proj = KeyMap.build([
      Rule("multi_modal_projector.linear_1.weight", "projector/linear_1/kernel", LINEAR),
      Rule("multi_modal_projector.linear_1.bias", "projector/linear_1/bias"),
      Rule("multi_modal_projector.linear_2.weight", "projector/linear_2/kernel", LINEAR),
      Rule("multi_modal_projector.linear_2.bias", "projector/linear_2/bias"),
  ])
  return (tower.with_prefix("vision_tower.", "vision") + proj.with_prefix("", "connector")
          + text.with_prefix("", "llm"))


def _batch(seed=0):
  """Row 0: image first; row 1: text only, right-padded; row 2: image after 2 words."""
  rng = np.random.default_rng(seed)
  t = NV + 8
  ids = rng.integers(3, IMAGE_ID, size=(3, t)).astype(np.int32)
  ids[:, 0] = 1
  ids[0, 1:1 + NV] = IMAGE_ID
  ids[2, 3:3 + NV] = IMAGE_ID
  mask = np.ones_like(ids)
  mask[1, -5:] = 0
  ids[1, -5:] = 0
  images = rng.standard_normal((3, 56, 56, 3)).astype(np.float32)
  return images, ids, mask


def test_logits_match_transformers_llava(tmp_path):
  vc = transformers.CLIPVisionConfig(
      hidden_size=VISION.hidden_size, intermediate_size=VISION.intermediate_size,
      num_hidden_layers=VISION.num_layers, num_attention_heads=VISION.num_heads,
      image_size=VISION.image_size, patch_size=VISION.patch_size)
  tc = transformers.LlamaConfig(
      vocab_size=LLM.vocab_size, hidden_size=LLM.hidden_size,
      intermediate_size=LLM.intermediate_size, num_hidden_layers=LLM.num_layers,
      num_attention_heads=LLM.num_heads, num_key_value_heads=LLM.num_kv_heads,
      rms_norm_eps=LLM.rms_norm_eps, max_position_embeddings=LLM.max_position_embeddings)
  hf_cfg = transformers.LlavaConfig(
      vision_config=vc, text_config=tc, image_token_index=IMAGE_ID, vision_feature_layer=-2,
      vision_feature_select_strategy="default", image_seq_length=NV, projector_hidden_act="gelu")
  torch.manual_seed(0)
  hf = tiny_hf.randomize_(transformers.LlavaForConditionalGeneration(hf_cfg), seed=3, std=0.15)
  hf.save_pretrained(tmp_path)

  cfg = C.ModelConfig(vision=VISION, llm=LLM, image_token_id=IMAGE_ID,
                      connector=C.ConnectorConfig(type="mlp2x_gelu"))
  assert C.num_visual_tokens(cfg) == NV
  model = MultimodalLM(cfg)
  images, ids, mask = _batch()
  abstract = abstract_params(model, images, ids, mask)
  with TensorSource().mount("", tmp_path) as source:
    params = load_params(source, _llava_keymap(VISION, LLM), abstract)

  @jax.jit
  def run(p, images):
    whole = model.apply({"params": p}, images, ids, mask)
    visual = model.apply({"params": p}, images, method=MultimodalLM.encode_images)
    embeds = model.apply({"params": p}, ids, visual, method=MultimodalLM.embed)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    parts, _ = model.apply({"params": p}, embeds, pos, mask.astype(bool),
                           method=MultimodalLM.decode)
    return whole, parts

  got, via_methods = (np.asarray(x) for x in run(params, images))
  with torch.no_grad():  # HF sees only the two real images; row 1 is text-only
    pixels = torch.from_numpy(images[[0, 2]]).permute(0, 3, 1, 2)
    want = hf(input_ids=torch.from_numpy(ids).long(), pixel_values=pixels,
              attention_mask=torch.from_numpy(mask).long()).logits.numpy()
  real = mask.astype(bool)
  assert got.shape == want.shape == (3, ids.shape[1], LLM.vocab_size)
  diff = np.abs(got - want)[real].max()
  print(f"llava max abs logit diff: {diff:.2e}")
  assert diff <= 2e-4, diff
  np.testing.assert_allclose(via_methods[real], got[real], atol=1e-5, rtol=0)
  # The visual tokens matter (a wrong placement would show) and the text row ignores its image.
  moved = np.asarray(run(params, images[::-1].copy())[0])
  assert np.abs(moved[0] - got[0]).max() > 1e-2
  np.testing.assert_allclose(moved[1][real[1]], got[1][real[1]], atol=1e-5, rtol=0)


def _loss(model, params, images, ids, mask):
  logits = model.apply({"params": params}, images, ids, mask)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  tgt = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  w = mask[:, 1:] * (ids[:, 1:] != IMAGE_ID)
  return -jnp.sum(tgt * w) / jnp.sum(w)


def test_acformer_forward_and_grad_on_a_2x2x2_mesh():
  vision = C.VisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                          num_layers=2, num_heads=4)   # select_layer -2: one block runs
  llm = C.LLMConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=1,
                    num_heads=4, num_kv_heads=2)
  conn = C.ConnectorConfig(type="acformer", num_queries=8, depth=1, heads=2, dim_head=8,
                           ff_mult=2)
  cfg = C.ModelConfig(vision=vision, llm=llm, connector=conn, image_token_id=IMAGE_ID)
  nv = C.num_visual_tokens(cfg)                   # 1 + 4 * (8 // 4) = 9
  model = MultimodalLM(cfg)
  rng = np.random.default_rng(1)
  ids = rng.integers(3, IMAGE_ID, size=(4, nv + 7)).astype(np.int32)
  ids[:, 1:1 + nv] = IMAGE_ID
  ids[3, 1:1 + nv] = 5                            # a text-only row
  mask = np.ones_like(ids)
  images = rng.standard_normal((4, 56, 56, 3)).astype(np.float32)

  mesh = sharding.make_mesh((2, 2, 2))
  key = jax.random.key(0)
  abstract = jax.eval_shape(model.init, key, images, ids, mask)
  shardings = sharding.logical_to_sharding(nn.get_partition_spec(abstract["params"]), mesh)
  batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  # Abstract-first init (as the trainer does it: no rules context, so the boxes add no
  # constraints): lowered with the target shardings; compiling it would cost ~15 s of CPU
  # in PRNG kernels, so the values are drawn on the host and placed straight into them.
  jax.jit(lambda k: nn.unbox(model.init(k, images, ids, mask)["params"]),
          out_shardings=shardings).lower(key)
  params = jax.device_put(tiny_hf.random_params(abstract, seed=2)["params"], shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    step = jax.jit(jax.value_and_grad(lambda p, *b: _loss(model, p, *b)),
                   in_shardings=(shardings, batch_sh, batch_sh, batch_sh),
                   out_shardings=(None, shardings))
    loss, grads = step(params, images, ids, mask)
  q = params["connector"]["resampler"]["layers"]["to_q"]["kernel"]
  assert q.shape == (1, 32, 16) and q.sharding == grads["connector"]["resampler"]["layers"][
      "to_q"]["kernel"].sharding
  assert q.addressable_shards[0].data.shape == (1, 16, 8)   # conn_embed/fsdp, conn_heads/tensor
  assert np.isfinite(float(loss))
  for name in ("connector", "llm"):
    for g in jax.tree.leaves(grads[name]):
      assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0
  for g in jax.tree.leaves(grads["vision"]):   # frozen tower: stop_gradient
    assert np.abs(np.asarray(g)).max() == 0
  host = jax.tree.map(np.asarray, params)        # same numbers without the mesh
  ref = jax.jit(lambda p: _loss(model, p, images, ids, mask))(host)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)


def test_rejects_mismatched_batch():
  cfg = C.ModelConfig(vision=VISION, llm=LLM, image_token_id=IMAGE_ID,
                      connector=C.ConnectorConfig(type="mlp2x_gelu"))
  with pytest.raises(ValueError, match="same B"):
    MultimodalLM(cfg).init(jax.random.key(0), np.zeros((2, 56, 56, 3), np.float32),
                           np.zeros((3, 4), np.int32))

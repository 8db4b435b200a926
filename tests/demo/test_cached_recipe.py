"""benchmarks/demo_cached_recipe.py: the model after cached tower outputs is the model."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from acformer_jax import config as config_lib
from acformer_jax.data.templates import IGNORE_INDEX
from acformer_jax.data.tokenizer import load_encoder
from acformer_jax.demo import recipe, scenes
from acformer_jax.demo import tokenizer as demo_tokenizer
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import experiment
from tests.paths import ROOT

_spec = importlib.util.spec_from_file_location(
    "demo_cached_recipe", ROOT / "benchmarks" / "demo_cached_recipe.py")
cr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cr)


def _tiny_model():
  c = experiment.base_config()
  recipe.tiny(c, "acformer")
  return config_lib.model_config_from_dict(c.model.to_dict())


def test_logits_after_the_tower_equal_the_full_model_on_padded_rows():
  mc = _tiny_model()
  samples = list(scenes.generate("qa", "train", 3, image_size=56))
  encoder = load_encoder(demo_tokenizer.build())
  ids, labels, mask = cr.padded(samples, "vicuna_v1", encoder, mc)
  lengths = mask.sum(1)
  assert ids.shape == labels.shape == mask.shape and len(set(lengths)) > 1
  assert np.all(labels[~mask] == IGNORE_INDEX) and np.all(ids[~mask] == encoder.pad_id)
  assert (ids == mc.image_token_id).sum(1).tolist() == [config_lib.num_visual_tokens(mc)] * 3

  model = MultimodalLM(mc)
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 56, 56, 3))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), images, jnp.asarray(ids))["params"])
  feats, attn = model.apply({"params": params}, images, method=lambda m, x: m.vision(x))
  got = cr.logits_fn(model)(params, feats, attn, jnp.asarray(ids), jnp.asarray(mask))
  for k, n in enumerate(lengths):  # each row alone, unpadded, through the whole model
    want = model.apply({"params": params}, images[k:k + 1], jnp.asarray(ids[k:k + 1, :n]))
    np.testing.assert_allclose(got[k, :n], want[0], atol=2e-5, rtol=2e-5)


def test_followups_replace_the_second_turn_with_balanced_existence_turns():
  samples = list(scenes.generate("qa", "train", 40, image_size=56, with_images=False))
  out = cr.with_followups(samples, 2, seed=0)
  answers = []
  for s, o in zip(samples, out):
    assert o["conversations"][:2] == s["conversations"][:2] and len(o["conversations"]) == 6
    for q, a in zip(o["conversations"][2::2], o["conversations"][3::2]):
      assert q["value"].startswith("Is there a ") and a["value"] in ("yes", "no")
      answers.append(a["value"])
  assert 25 < answers.count("yes") < 55


def test_oracle_features_mark_each_object_on_the_patches_of_its_cell():
  samples = list(scenes.generate("qa", "test", 6, image_size=84, with_images=False))
  feats = cr.oracle_features(samples, np.zeros((1, 37, 16), np.float32), grid=6)
  assert feats.shape == (6, 37, 16)
  for k, s in enumerate(samples):
    marked = {i - 1 for i in range(1, 37) if feats[k, i, :10].max() > 0.5}
    want = set()
    for o in s["meta"]["objects"]:
      r, c = o["cell"]
      want |= {(2 * r + dr) * 6 + 2 * c + dc for dr in (0, 1) for dc in (0, 1)}
      patch = feats[k, 1 + 2 * r * 6 + 2 * c]
      assert np.argmax(patch[:5]) == tuple(scenes.COLORS).index(o["color"])
      assert np.argmax(patch[5:9]) == scenes.SHAPES.index(o["shape"])
    assert marked == want


def test_as_text_writes_the_scene_before_the_question_and_drops_the_image():
  samples = list(scenes.generate("qa", "train", 4, image_size=56, with_images=False))
  for s, t in zip(samples, cr.as_text(samples)):
    first = t["conversations"][0]["value"]
    assert scenes.IMAGE_TOKEN not in first
    assert first.startswith(scenes.caption(s["meta"]["objects"]) + "\n" + s["meta"]["question"])
    assert t["conversations"][1:] == s["conversations"][1:]

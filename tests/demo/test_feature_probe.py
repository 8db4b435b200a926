"""benchmarks/demo_feature_probe.py: the per-object token lookup and the variance share."""
import importlib.util

import numpy as np

from tests.paths import ROOT

_spec = importlib.util.spec_from_file_location(
    "demo_feature_probe", ROOT / "benchmarks" / "demo_feature_probe.py")
fp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fp)


def test_variance_share_is_one_when_the_label_fixes_the_token_and_small_when_independent():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 400)
  centres = rng.normal(size=(4, 8))
  assert np.isclose(fp.variance_share(centres[labels], labels), 1.0)
  assert fp.variance_share(rng.normal(size=(400, 8)), labels) < 0.05
  # Signal of variance 1 on one axis, noise of variance 1 on each of three more: a quarter.
  x = np.concatenate([np.where(labels % 2, 1.0, -1.0)[:, None],
                      rng.choice([-1.0, 1.0], size=(400, 3))], 1)
  assert abs(fp.variance_share(x, labels) - 0.25) < 0.05


def test_object_tokens_pick_the_patch_under_each_centre():
  feats = np.arange(2 * 16).reshape(2, 16, 1).astype(np.float32)  # 2 scenes, 4 x 4 patches
  centres = np.array([[0, 1.0, 1.0], [0, 55.0, 0.0], [1, 20.0, 43.0], [1, 56.0, 56.0]])
  got = fp.object_tokens(feats, centres, 56)[:, 0]
  np.testing.assert_array_equal(got, [0, 3, 16 + 3 * 4 + 1, 16 + 15])


def test_scene_objects_match_the_cell_labels():
  images, colours, shapes, objects = fp.scenes_and_labels(6, 56)
  assert images.shape == (6, 56, 56, 3) and len(objects) == (shapes > 0).sum()
  for scene, x, y, shape, colour in objects:
    cell = int(y // (56 / 3)) * 3 + int(x // (56 / 3))
    assert shapes[int(scene), cell] == shape + 1 and colours[int(scene), cell] == colour + 1

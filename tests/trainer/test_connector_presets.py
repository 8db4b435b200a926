"""Every paper baseline is a preset of configs/vicuna7b_stage1.py, and the stage-1
max_length follows the final connector (also after a command-line override)."""
import importlib.util
import pathlib

import pytest

from acformer_jax import config as C
from acformer_jax.trainer import experiment, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _get_config(arg):
  spec = importlib.util.spec_from_file_location("stage1", ROOT / "configs" / "vicuna7b_stage1.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.init.allow_random = True  # no weights here: only the config is checked
  return c


@pytest.mark.parametrize("kind", experiment.PAPER_CONNECTORS)
def test_paper_presets_validate_with_their_budgets(kind):
  for k, tokens in zip((64, 144, 256), (65, 145, 257)):
    c = _get_config(f"{kind}{k}")
    mc = validate.validate(c, num_devices=16)
    want = {"c_abstractor": k, "evit": k + 2}.get(kind, tokens)
    assert (mc.connector.type, C.num_visual_tokens(mc)) == (kind, want)
    # Packed into LLaVA's 2048-token rows with the image slots of the AcFormer preset of the
    # same budget (experiment.PACKING).
    assert c.data.packing and c.data.max_length == 2048
    assert c.data.max_images_per_row == experiment.PACKING[(1, f"acformer{k}")][0]


def test_connector_override_gets_its_own_max_length():
  """Unpacked stage 1 (data.max_length = AUTO): the length follows the final connector."""
  c = _get_config("acformer64")
  c.data.packing, c.data.max_length = False, experiment.AUTO_MAX_LENGTH
  c.model.connector.type = "mlp2x_gelu"  # as --config.model.connector.type=mlp2x_gelu does
  validate.validate(c, num_devices=16)
  assert c.data.max_length == 768  # 576 tokens, not acformer64's 256
  c = _get_config("acformer144")
  c.data.max_length = 1024  # an explicit length is kept
  validate.validate(c, num_devices=16)
  assert c.data.max_length == 1024

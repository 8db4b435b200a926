"""Configs, validation, schedule and FLOPs accounting (no training; fast).

Spec: docs/method.md 2.1-2.2 (recipe numbers), docs/jax_practices.md items 10, 12, 13."""
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from acformer_jax import config as C
from acformer_jax.models.llama import LlamaModel
from acformer_jax.models.vit import VisionTransformer
from acformer_jax.trainer import experiment, flops, loss, optim
from acformer_jax.trainer.validate import ConfigError, resolve_mesh_shape, validate

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("name,args,devices", [
    ("vicuna7b_stage1", ("acformer64", "acformer144", "acformer256", "mlp2x_gelu"), 16),
    ("vicuna7b_stage2", ("acformer64", "acformer144", "acformer256", "mlp2x_gelu"), 16),
    ("vicuna13b_stage1", ("acformer144", "mlp2x_gelu"), 16),
    ("vicuna13b_stage2", ("acformer144", "mlp2x_gelu"), 16),
    ("tiny_acformer_stage1", (None,), 8), ("tiny_acformer_stage2", (None,), 8),
    ("tiny_mlp", ("stage1", "stage2"), 8),
])
def test_every_config_validates_with_its_recipe(name, args, devices):
  mod = _load(CONFIGS / f"{name}.py")
  for arg in args:
    c = mod.get_config() if arg is None else mod.get_config(arg)
    c.init.params_from = "orbax:/runs/previous"  # real runs name their sources
    mc = validate(c, num_devices=devices)
    stage = c.train.stage
    # The tiny demo recipes train their random LLM in both stages (demo/recipe.py).
    assert c.train.trainable == (experiment.STAGE1_TRAINABLE if stage == 1 and "tiny" not in name
                                 else experiment.STAGE2_TRAINABLE)
    assert c.data.template == ("plain" if stage == 1 else "vicuna_v1")
    assert c.data.global_batch_size == c.train.global_batch_size
    if name.startswith("vicuna"):
      # Packed 2048-token rows; the global batch counts rows, ~LLaVA's samples per step.
      m, rows, per_row = experiment.PACKING[(stage, arg)]
      assert c.data.packing and c.data.max_length == 2048 and c.data.max_images_per_row == m
      assert c.train.global_batch_size == rows and rows % 16 == 0
      llava = 256 if stage == 1 else 128
      assert llava / 1.5 < rows * per_row < llava * 1.5
      assert c.train.steps == math.ceil(experiment.EPOCH_SAMPLES[stage] / round(rows * per_row))
      assert c.train.optimizer.lr == (1e-3 if stage == 1 else 2e-5)
      assert c.train.optimizer.warmup_ratio == 0.03 and c.train.optimizer.clip_norm == 1.0
      assert mc.llm.hidden_size == (4096 if "7b" in name else 5120)
      if arg.startswith("acformer"):
        assert C.num_visual_tokens(mc) == int(arg[len("acformer"):]) + 1


def _tiny_config():
  c = _load(CONFIGS / "tiny_acformer_stage1.py").get_config()
  return c


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.mesh.update(shape=(4, 4, 1)), "needs 16 devices, but 8 are available"),
    (lambda c: c.train.update(global_batch_size=12), "rows per microbatch must be divisible by the batch mesh axes data x fsdp = 4 x 2"),
    (lambda c: c.train.update(grad_accum_steps=3), "divisible by train.grad_accum_steps=3"),
    (lambda c: c.model.connector.update(num_queries=2), "below the ViT head count model.vision.num_heads=4"),
    (lambda c: c.model.connector.update(type="qformer"), "model.connector.type='qformer' is not one of"),
    (lambda c: c.data.update(max_length=10), "leaves no room for text after the 17 visual tokens"),
    (lambda c: c.init.update(allow_random=False), "no parameter source for \\['vision', 'llm'\\]"),
    (lambda c: c.init.update(llm="hf_clip:/x"), "hf_clip can only initialise vision"),
    (lambda c: c.model.update(remat_policy="most"), "model.remat_policy='most' is not one of"),
    (lambda c: c.data.update(packing_groups=3), "data.packing_groups=3 must be >= 1 and divide the global batch"),
])
def test_validation_names_the_field(edit, message):
  c = _tiny_config()
  validate(c, num_devices=8)
  edit(c)
  with pytest.raises(ConfigError, match=message):
    validate(c, num_devices=8)


def test_mesh_resolution_with_dcn():
  errors = []
  assert resolve_mesh_shape((1, -1, 2), (2, 1, 1), 32, errors) == (2, 8, 2)
  assert resolve_mesh_shape((-1, 1, 1), (1, 1, 1), 8, errors) == (8, 1, 1)
  assert not errors
  assert resolve_mesh_shape((-1, -1, 1), (1, 1, 1), 8, errors) is None and errors


def test_schedule_matches_hf_cosine_with_warmup():
  total, peak = 1000, 2e-5
  sched = optim.lr_schedule(peak, total, 0.03)
  warm = math.ceil(0.03 * total)
  for s in (0, 1, 15, warm, 500, 999):
    if s < warm:
      want = peak * s / warm
    else:
      want = peak * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
    assert float(sched(s)) == pytest.approx(want, rel=1e-5, abs=1e-12)


def test_partition_and_decay_mask():
  params = {"connector": {"projector": {"linear_1": {"kernel": np.ones((2, 2)), "bias": np.ones(2)}}},
            "llm": {"norm": {"scale": np.ones(2)}, "lm_head": {"kernel": np.ones((2, 3))}}}
  train, frozen = optim.split_params(params, ["connector/"])
  assert list(train) == ["connector"] and list(frozen) == ["llm"]
  assert optim.merge_params(train, frozen).keys() == params.keys()
  mask = optim.decay_mask(params)
  assert mask["connector"]["projector"]["linear_1"] == {"kernel": True, "bias": False}
  assert mask["llm"]["norm"]["scale"] is False and mask["llm"]["lm_head"]["kernel"] is True
  with pytest.raises(ValueError, match="matches no parameter; top-level parameter groups are"):
    optim.split_params(params, ["^vision/"])


def test_select_positions_keeps_the_first_supervised_targets():
  labels = jnp.array([[1, -100, 5, 6, 7, -100], [1, 2, -100, -100, -100, -100]])
  pos, tgt, dropped = loss.select_positions(labels, 2)
  # Position t predicts labels[t + 1]: row 0 supervises t = 1, 2, 3 (5, 6, 7); row 1 t = 0.
  np.testing.assert_array_equal(pos, [[1, 2], [0, 0]])
  np.testing.assert_array_equal(tgt, [[5, 6], [2, -100]])
  assert int(dropped) == 1


def _cost(fn, *args):
  return jax.jit(fn).lower(*args).cost_analysis()["flops"]


def test_flops_formulas_match_xla_counts():
  # Unrolled towers (scan bodies are counted once by XLA) with widths where matmuls dominate.
  v = C.VisionConfig(image_size=56, patch_size=14, hidden_size=128, intermediate_size=512,
                     num_layers=3, num_heads=4)
  vit = VisionTransformer(v, scan_layers=False)
  x = jnp.zeros((1, 56, 56, 3))
  p = jax.eval_shape(lambda: vit.init(jax.random.key(0), x))
  xla = _cost(lambda p, x: vit.apply(p, x), p, x)
  assert flops.vit_forward_flops(v) <= xla <= 1.08 * flops.vit_forward_flops(v)

  l = C.LLMConfig(vocab_size=256, hidden_size=128, intermediate_size=384, num_layers=2,
                  num_heads=4, num_kv_heads=2)
  lm = LlamaModel(l, scan_layers=False)
  t = 32
  e, pos, km = jnp.zeros((1, t, 128)), jnp.zeros((1, t), jnp.int32), jnp.ones((1, t), bool)
  p = jax.eval_shape(lambda: lm.init(jax.random.key(0), e, pos, km))
  xla = _cost(lambda p: lm.apply(p, e, pos, km)[0], p)
  w, a = flops.llm_forward_flops(l, t)
  assert w + 2 * a <= xla <= 1.08 * (w + 2 * a)  # XLA computes the full (unmasked) scores
  # 6N / 4N: a frozen LLM still back-propagates through its activations.
  mc = C.ModelConfig(vision=v, llm=l)
  s2 = flops.train_step_flops(mc, 4, t, llm_trainable=True)
  s1 = flops.train_step_flops(mc, 4, t, llm_trainable=False)
  assert s2.llm == pytest.approx(4 * (3 * w + 3 * a)) and s1.llm == pytest.approx(4 * (2 * w + 3 * a))
  assert s1.vit == s2.vit == 4 * flops.vit_forward_flops(v)


def test_real_flops_of_a_packed_row_are_its_samples_flops():
  mc = C.ModelConfig(llm=C.LLMConfig(num_layers=2))
  for trainable in (True, False):
    one = [flops.train_step_flops(mc, 1, n, llm_trainable=trainable, images_per_row=k)
           for n, k in ((700, 1), (300, 0), (900, 1))]
    real = flops.real_step_flops(mc, tokens=1900, images=2, attention_pairs=700 ** 2 + 300 ** 2 + 900 ** 2,
                                 head_tokens=1900, llm_trainable=trainable)
    assert real.total == pytest.approx(sum(f.total for f in one), rel=1e-12)
    assert real.vit == 2 * flops.vit_forward_flops(mc.vision)
    # Padded: the whole 2048-row as one sequence, and every one of its 3 image slots.
    pad = flops.train_step_flops(mc, 1, 2048, llm_trainable=trainable, images_per_row=3)
    assert pad.vit == 3 * flops.vit_forward_flops(mc.vision) and pad.total > real.total


@pytest.mark.parametrize("stage,preset", [(2, "mlp2x_gelu"), (1, "mlp2x_gelu")])
def test_recipe_images_per_row_come_from_the_length_profile(stage, preset):
  from acformer_jax.benchmarking import length_profile  # pylint: disable=import-outside-toplevel
  mc = C.ModelConfig(vision=experiment.clip_vit_l336(), llm=experiment.vicuna("7b"),
                     connector=C.ConnectorConfig(**experiment.CONNECTOR_PRESETS[preset]))
  m, stats = length_profile.choose_images_per_row(mc, stage, samples=3000)
  want_m, _, per_row = experiment.PACKING[(stage, preset)]
  assert m == want_m and stats["samples_per_row"] == pytest.approx(per_row, rel=0.05)


def test_peak_table():
  assert flops.table_peak_flops("TPU v5 lite") == 197e12
  assert flops.table_peak_flops("TPU v4") == 275e12
  assert flops.table_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.table_peak_flops("cpu") is None

"""Bad input to the converter (docs/conversion.md): one clear error naming what is wrong,
and never an output directory that looks complete (spec docs/jax_practices.md items 7-8)."""
import json

import pytest
import safetensors.torch
import torch
from absl import flags

import tiny_checkpoints as T
from acformer_jax import convert as convert_cli
from acformer_jax import params_store
from acformer_jax.conversion import formats, pipeline
from acformer_jax.conversion.keymaps import LINEAR, ConversionError


def _assert_nothing_written(tmp_path, name="out"):
  assert not (tmp_path / name).exists()
  assert not list(tmp_path.glob(f".{name}*"))


@pytest.fixture(scope="module")
def llava_src(tmp_path_factory):
  d = tmp_path_factory.mktemp("src")
  T.hf_llava(d)
  return d


def _edit(src, dst, edit, config=None):
  """Copy of the hf-llava source with its tensors (and config) edited."""
  dst.mkdir()
  state = safetensors.torch.load_file(src / "model.safetensors")
  edit(state)
  safetensors.torch.save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
  cfg = json.loads((src / "config.json").read_text())
  if config:
    config(cfg)
  (dst / "config.json").write_text(json.dumps(cfg))
  return dst


def test_unknown_format(llava_src, tmp_path):
  with pytest.raises(ValueError, match=r"unknown format 'llava-next'; expected one of \["):
    pipeline.convert("llava-next", llava_src, tmp_path / "out")
  _assert_nothing_written(tmp_path)


def test_missing_shards(tmp_path):
  T.hf_llava(tmp_path / "src", shard="20KB")
  index = json.loads((tmp_path / "src" / "model.safetensors.index.json").read_text())
  gone = sorted(set(index["weight_map"].values()))[1]
  (tmp_path / "src" / gone).unlink()
  with pytest.raises(FileNotFoundError, match=f"names shard files that do not exist: .*{gone}"):
    pipeline.convert("hf-llava", tmp_path / "src", tmp_path / "out")
  _assert_nothing_written(tmp_path)


def test_missing_unexpected_and_misshaped_keys_in_one_error(llava_src, tmp_path):
  def edit(state):
    del state["language_model.model.layers.1.mlp.up_proj.weight"]
    state["language_model.model.layers.7.mlp.up_proj.weight"] = torch.zeros(48, 32)
    state["multi_modal_projector.linear_2.bias"] = torch.zeros(31)
  src = _edit(llava_src, tmp_path / "bad", edit)
  with pytest.raises(ConversionError) as err:
    pipeline.convert("hf-llava", src, tmp_path / "out")
  msg = str(err.value)
  assert str(src) in msg
  assert "missing keys (1): language_model.model.layers.1.mlp.up_proj.weight" in msg
  assert "unexpected keys (1): language_model.model.layers.7.mlp.up_proj.weight" in msg
  assert "multi_modal_projector.linear_2.bias: file (31,), expected (32,)" in msg
  _assert_nothing_written(tmp_path)


def test_dtype_mismatch(llava_src, tmp_path):
  def edit(state):
    state["language_model.model.norm.weight"] = state["language_model.model.norm.weight"].half()
    state["vision_tower.pre_layrnorm.bias"] = torch.zeros(32, dtype=torch.int32)
  src = _edit(llava_src, tmp_path / "bad", edit)
  with pytest.raises(ConversionError) as err:
    pipeline.convert("hf-llava", src, tmp_path / "out")
  msg = str(err.value)
  assert "vision_tower.pre_layrnorm.bias: dtype int32, expected a floating-point tensor" in msg
  assert ("declares dtype float32 but 1 tensor(s) differ: "
          "language_model.model.norm.weight (float16)") in msg
  _assert_nothing_written(tmp_path)


def test_config_disagrees_with_tensors(llava_src, tmp_path):
  def config(cfg):
    cfg["text_config"]["num_hidden_layers"] = 3
    cfg["text_config"]["intermediate_size"] = 40
    cfg["image_seq_length"] = 9
  src = _edit(llava_src, tmp_path / "bad", lambda s: None, config)
  with pytest.raises(ConversionError) as err:
    pipeline.convert("hf-llava", src, tmp_path / "out")
  msg = str(err.value)
  assert "image_seq_length=9 but the vision tower has 16 patches" in msg
  assert "missing keys (9): language_model.model.layers.2." in msg
  assert "language_model.model.layers.0.mlp.up_proj.weight: file (48, 32), expected (40, 32)" in msg
  _assert_nothing_written(tmp_path)


def test_acformer_config_and_format_mixups(tmp_path):
  T.original(tmp_path / "acf", kind="acformer", as_bin=False)
  T.clip(tmp_path / "clip")
  cfg = json.loads((tmp_path / "acf" / "config.json").read_text())
  cfg.update(acformer_resampler_depth=6, mm_hidden_size=64)
  (tmp_path / "acf" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConversionError) as err:
    pipeline.convert("acformer", tmp_path / "acf", tmp_path / "out", vision=tmp_path / "clip")
  msg = str(err.value)
  assert "acformer_resampler_depth=6 but the checkpoint holds 2 resampler layers" in msg
  assert "mm_hidden_size=64 but the vision tower's hidden_size is 32" in msg
  with pytest.raises(ConversionError, match="holds an AcFormer resampler .* use --format acformer"):
    pipeline.convert("llava", tmp_path / "acf", tmp_path / "out", vision=tmp_path / "clip")
  with pytest.raises(ValueError, match="--vision is required: the CLIP vision tower directory"):
    pipeline.convert("acformer", tmp_path / "acf", tmp_path / "out")
  with pytest.raises(ValueError, match="--llm is required for llava-stage1"):
    pipeline.convert("llava-stage1", tmp_path / "acf", tmp_path / "out", vision=tmp_path / "clip")
  _assert_nothing_written(tmp_path)


def test_failed_self_check_writes_nothing(llava_src, tmp_path, monkeypatch):
  """A wrong transpose of a square kernel passes every shape check; the logits catch it."""
  real = formats.make_plan

  def buggy(*a, **k):
    plan = real(*a, **k)
    entries = tuple(e if "q_proj.weight" not in e.hf or "language" not in e.hf else
                    type(e)(e.hf, e.path, e.row, type(LINEAR)()) for e in plan.keymap.entries)
    plan.keymap = type(plan.keymap)(entries, plan.keymap.ignore)
    return plan
  monkeypatch.setattr(formats, "make_plan", buggy)
  with pytest.raises(ConversionError, match=r"self-check failed: .*logits: max\|Δ\| = "):
    pipeline.convert("hf-llava", llava_src, tmp_path / "out")
  _assert_nothing_written(tmp_path)


def test_interrupted_write_leaves_no_output(llava_src, tmp_path, monkeypatch):
  def crash(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(params_store.layout, "copy_tokenizer", crash)
  with pytest.raises(OSError, match="disk full"):
    pipeline.convert("hf-llava", llava_src, tmp_path / "out", skip_check=True)
  _assert_nothing_written(tmp_path)
  (tmp_path / "out").mkdir()
  with pytest.raises(FileExistsError, match="exists .*--overwrite"):
    pipeline.convert("hf-llava", llava_src, tmp_path / "out", skip_check=True)


def test_cli_reports_one_error_and_exit_status(llava_src, tmp_path, capsys):
  src = _edit(llava_src, tmp_path / "bad",
              lambda s: s.pop("language_model.model.norm.weight"))
  argv = ["convert", "--format=hf-llava", f"--input={src}", f"--output={tmp_path / 'out'}"]
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    assert convert_cli.main(argv[:1]) == 1
  finally:
    flags.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  assert err.startswith("error: hf-llava input") and "language_model.model.norm.weight" in err
  _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("fmt", ["hf-llava", "llava"])
def test_export_refuses_a_connector_input_norm_it_would_drop(tmp_path, fmt):
  """LLaVA / transformers projectors have no LayerNorm on the tower features: exporting a
  ``connector.input_norm`` checkpoint must fail before writing, not drop the norm."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from acformer_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion import exporting  # pylint: disable=import-outside-toplevel
  mc = config_lib.ModelConfig()
  mc = dataclasses.replace(mc, connector=dataclasses.replace(mc.connector, type="mlp2x_gelu",
                                                             input_norm=True))
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  params_store.write_model_config(ckpt, mc)
  with pytest.raises(ValueError, match=r"ckpt: model.connector.input_norm=True .* no counterpart"):
    exporting.export(ckpt, fmt, tmp_path / "out")
  _assert_nothing_written(tmp_path)

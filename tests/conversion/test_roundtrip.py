"""PyTorch -> acformer_jax -> PyTorch for every format (docs/conversion.md; spec
``docs/jax_practices.md`` items 7-8, ``docs/method.md`` 2.9, 1.5): the exported tensors are
bit-identical to the source, and the self-check's transformers-vs-JAX logits agree to
2e-4 in float32."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers

import tiny_checkpoints as T
from acformer_jax import config as C
from acformer_jax import load_pretrained
from acformer_jax.conversion import exporting, pipeline
from acformer_jax.conversion.check import fixed_inputs
from acformer_jax import params_store
from acformer_jax.inference import loading
from tests.inference import tiny_model

TOL = 2e-4


def _convert(fmt, src, out, **kw):
  report = pipeline.convert(fmt, src, out, tolerance=TOL, **kw)
  assert report["self_check"] == "passed", report
  assert report["max_abs_diff"] <= TOL, report
  return report


def _assert_same_tensors(got, want, keys=None):
  keys = sorted(want) if keys is None else keys
  assert sorted(got) == sorted(keys)
  for k in keys:
    a, b = got[k], want[k]
    assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
    assert torch.equal(a.view(torch.uint8) if a.dtype == torch.bfloat16 else a, b.view(
        torch.uint8) if b.dtype == torch.bfloat16 else b), k


@pytest.mark.parametrize("layout", ["transformers5", "legacy", "current"])
def test_hf_llava(layout, tmp_path):
  model = T.hf_llava(tmp_path / "src", layout=layout, shard="20KB" if layout == "legacy" else None)
  _convert("hf-llava", tmp_path / "src", tmp_path / "ckpt")
  cfg = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
  assert cfg["llm"]["vocab_size"] == 96 and cfg["image_token_id"] == 94  # added rows kept
  assert cfg["llm"]["pad_token_id"] == 95 and cfg["connector"]["type"] == "mlp2x_gelu"
  exporting.export(tmp_path / "ckpt", "hf-llava", tmp_path / "back", max_shard_size="30KB")
  # Same layout, same bytes, and transformers loads it.
  _assert_same_tensors(T.files_state(tmp_path / "back"), T.files_state(tmp_path / "src"))
  assert (tmp_path / "back" / "model.safetensors.index.json").is_file()
  back = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
  _assert_same_tensors(back.state_dict(), model.state_dict())
  if layout == "current":  # logits of the re-imported model == ours
    mod, params = load_pretrained(tmp_path / "ckpt")
    _, direct = load_pretrained(tmp_path / "src")  # converted on the fly, nothing written
    jax.tree.map(np.testing.assert_array_equal, params, direct)
    # The training stack initialises a subtree from the same directory.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            params["llm"])
    llm = params_store.restore(tmp_path / "ckpt", abstract, prefix=("llm",))
    jax.tree.map(np.testing.assert_array_equal, llm, params["llm"])
    images, ids = fixed_inputs(mod.config)
    ours = np.asarray(jax.jit(mod.apply)({"params": params}, images, ids))  # one compile
    with torch.no_grad():
      ref = back(input_ids=torch.from_numpy(ids.astype(np.int64)),
                 pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
    assert np.max(np.abs(ours - ref)) <= TOL
  if layout == "transformers5":  # exported in another layout and dtype
    exporting.export(tmp_path / "ckpt", "hf-llava", tmp_path / "bf16", layout="legacy",
                     dtype="bfloat16")
    want = {T._to_legacy(k): v.to(torch.bfloat16)  # pylint: disable=protected-access
            for k, v in T.files_state(tmp_path / "src").items()}
    _assert_same_tensors(T.files_state(tmp_path / "bf16"), want)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("fmt,kind", [("llava", "mlp2x_gelu"), ("llava", "linear"),
                                      ("acformer", "acformer")])
def test_original_layouts(fmt, kind, tmp_path):
  """Released float16 .bin shards + a separate CLIP directory, and back."""
  state = T.original(tmp_path / "src", kind=kind, as_bin=kind != "linear")
  T.clip(tmp_path / "clip")
  report = _convert(fmt, tmp_path / "src", tmp_path / "ckpt", vision=tmp_path / "clip")
  assert report["param_dtype"] == "float32"  # float16 + float32 sources held exactly
  mc = C.model_config_from_dict(json.loads((tmp_path / "ckpt" / "model_config.json").read_text()))
  assert mc.connector.type == kind
  if kind == "acformer":
    assert (mc.connector.num_queries, mc.connector.depth, mc.connector.heads) == (8, 2, 2)
    assert C.num_visual_tokens(mc) == 9
  exporting.export(tmp_path / "ckpt", fmt, tmp_path / "back")
  del state["model.layers.0.self_attn.rotary_emb.inv_freq"]
  _assert_same_tensors(T.files_state(tmp_path / "back"), state)   # float16, original keys
  _assert_same_tensors(T.files_state(tmp_path / "back" / "vision_tower"),
                       T.files_state(tmp_path / "clip"))
  cfg = json.loads((tmp_path / "back" / "config.json").read_text())
  assert cfg["mm_vision_tower"] == str(tmp_path / "back" / "vision_tower")
  assert cfg["mm_projector_type"] == ("linear" if kind == "linear" else "mlp2x_gelu")
  assert cfg["tokenizer_model_max_length"] == 2048  # source fields kept
  transformers.CLIPVisionModel.from_pretrained(tmp_path / "back" / "vision_tower")


def test_stage1_projector_with_towers(tmp_path):
  """mm_projector.bin (AcFormer) + CLIP + Vicuna = a stage-2 start; exported as acformer.
  The tokenizer of the Vicuna directory travels with the checkpoint."""
  proj = T.stage1(tmp_path / "s1")
  T.clip(tmp_path / "clip")
  lm = T.llama(tmp_path / "llm")
  tiny_model.make_tokenizer(tmp_path / "llm")
  _convert("llava-stage1", tmp_path / "s1" / "mm_projector.bin", tmp_path / "ckpt",
           vision=tmp_path / "clip", llm=tmp_path / "llm")
  loaded = loading.load_for_inference(tmp_path / "ckpt")  # what generate / evaluate call
  assert loaded.config.connector.type == "acformer" and len(loaded.tokenizer) == 150
  exporting.export(tmp_path / "ckpt", "acformer", tmp_path / "back")
  want = dict(proj)
  want.update({k: v.detach() for k, v in lm.state_dict().items()})
  _assert_same_tensors(T.files_state(tmp_path / "back"), want)
  _assert_same_tensors(T.files_state(tmp_path / "back" / "vision_tower"),
                       T.files_state(tmp_path / "clip"))
  assert (tmp_path / "back" / "tokenizer.model").is_file()


@pytest.mark.parametrize("fmt", ["hf-llama", "hf-clip"])
def test_towers_with_fresh_connector(fmt, tmp_path):
  """Pretrained CLIP + LLaMA and a new connector (a stage-1 start). hf-clip takes the same
  path with the roles of --input and --llm/--vision swapped; it skips the (identical)
  self-check to keep the suite fast."""
  T.clip(tmp_path / "clip")
  T.llama(tmp_path / "llm")
  if fmt == "hf-llama":
    connector = {"type": "acformer", "num_queries": 8, "depth": 1, "heads": 2, "dim_head": 8}
    report = _convert(fmt, tmp_path / "llm", tmp_path / "ckpt", vision=tmp_path / "clip",
                      connector=connector)
    assert "vision features" in report["check_detail"] and "text logits" in report["check_detail"]
    export_as, kv = "acformer", "model.mm_projector.0.layers.0.0.to_kv.weight"
  else:
    pipeline.convert(fmt, tmp_path / "clip", tmp_path / "ckpt", llm=tmp_path / "llm",
                     connector={"type": "mlp2x_gelu"}, skip_check=True)
    export_as, kv = "llava", "model.mm_projector.2.weight"
  exporting.export(tmp_path / "ckpt", export_as, tmp_path / "back")
  got = T.files_state(tmp_path / "back")
  lm = T.files_state(tmp_path / "llm")
  _assert_same_tensors({k: got[k] for k in lm}, lm)
  assert got[kv].shape == (32, 32)
  _assert_same_tensors(T.files_state(tmp_path / "back" / "vision_tower"),
                       T.files_state(tmp_path / "clip"))

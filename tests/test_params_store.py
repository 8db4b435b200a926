"""The params store (acformer_jax/params_store): the layout, atomic saves that never leave a
half-written directory or non-finite params behind, whole-tree and subtree restores onto a
mesh, the tokenizer lookup, and errors that name the file or key."""
import json

import jax
import numpy as np
import pytest

from acformer_jax import config as C
from acformer_jax import params_store
from acformer_jax import sharding
from acformer_jax.params_store import layout
from tests.trainer import tiny


@pytest.fixture(scope="module")
def host_params():
  rng = np.random.default_rng(0)
  target = params_store.target_tree(tiny.MODEL)
  return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), target)


@pytest.fixture
def tok_dir(tmp_path):
  d = tmp_path / "tok_src"
  d.mkdir()
  (d / "tokenizer.json").write_text("{}")
  (d / "tokenizer_config.json").write_text("{}")
  (d / "unrelated.txt").write_text("x")
  return d


def _listing(d):
  return sorted(p.name for p in d.iterdir())


def test_save_writes_the_layout_atomically(host_params, tok_dir, tmp_path, monkeypatch):
  out = params_store.save(tmp_path / "ckpt", host_params, tiny.MODEL, tokenizer_dir=tok_dir)
  assert _listing(out) == ["model_config.json", "params", "params_checksums.json", "tokenizer"]
  assert _listing(out / "tokenizer") == ["tokenizer.json", "tokenizer_config.json"]
  assert params_store.is_checkpoint(out) and params_store.read_model_config(out) == tiny.MODEL
  with pytest.raises(FileExistsError, match="ckpt exists .*--overwrite"):
    params_store.save(out, host_params, tiny.MODEL)
  # A write that fails midway leaves the previous directory as it was and nothing else.
  def crash(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(layout, "copy_tokenizer", crash)
  with pytest.raises(OSError, match="disk full"):
    params_store.save(out, host_params, tiny.MODEL, tokenizer_dir=tok_dir, overwrite=True)
  assert _listing(tmp_path) == ["ckpt", "tok_src"]
  assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_non_finite_params_are_refused(host_params, tmp_path):
  bad = jax.tree.map(np.copy, host_params)
  leaf = jax.tree_util.tree_leaves_with_path(bad["llm"])[0]
  name = "llm/" + "/".join(k.key for k in leaf[0])
  leaf[1].flat[3] = np.nan
  with pytest.raises(params_store.NonFiniteError, match=f"NaN/Inf.*{name}"):
    params_store.save(tmp_path / "nan", bad, tiny.MODEL)
  on_device = {"x": jax.numpy.array([1.0, np.inf]), "ok": jax.numpy.zeros(2)}
  with pytest.raises(params_store.NonFiniteError, match=r"\['x'\]"):
    params_store.check_finite(on_device)
  assert _listing(tmp_path) == []


def test_restore_whole_tree_and_subtree_onto_a_mesh(host_params, tmp_path):
  out = params_store.save(tmp_path / "ckpt", host_params, tiny.MODEL)
  mesh = sharding.make_mesh((2, 2, 2))
  mc, params = params_store.restore_all(out, mesh=mesh, dtype="bfloat16")
  assert mc.dtype == "bfloat16" and mc.param_dtype == tiny.MODEL.param_dtype
  jax.tree.map(np.testing.assert_array_equal, params, host_params)
  # Only the LLM, onto another mesh: the shardings come from the requested target.
  mesh2 = sharding.make_mesh((1, 4, 2))
  target = params_store.target_tree(tiny.MODEL, mesh2)["llm"]
  llm = params_store.restore(out, target, prefix=("llm",))
  jax.tree.map(np.testing.assert_array_equal, llm, host_params["llm"])
  jax.tree.map(lambda x, t: (x.sharding == t.sharding) or pytest.fail(str(x.sharding)),
               llm, target)
  emb = llm["embed_tokens"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  # A key the item does not hold is named (a partial restore would skip it silently).
  with pytest.raises(ValueError, match=r"cannot load llm from .*params: it holds no array \['llm/nope'\]"):
    params_store.restore(out, {"nope": target["norm"]["scale"]}, prefix=("llm",))


def test_tokenizer_lookup(tok_dir, tmp_path):
  assert params_store.find_tokenizer(tok_dir) == tok_dir
  assert params_store.find_tokenizer(tok_dir / "tokenizer.json") == tok_dir  # a file in it
  ckpt = tmp_path / "ckpt"
  params_store.copy_tokenizer(tok_dir, ckpt / "tokenizer")
  (ckpt / "tokenizer.model").write_text("stale")  # the layout's tokenizer/ comes first
  assert params_store.find_tokenizer(None, tmp_path / "none", ckpt) == ckpt / "tokenizer"
  (tmp_path / "none").mkdir()
  assert params_store.find_tokenizer(tmp_path / "none") is None
  with pytest.raises(FileNotFoundError, match="none holds neither tokenizer.model nor tokenizer.json"):
    params_store.copy_tokenizer(tmp_path / "none", tmp_path / "out")


def test_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="model_config.json not found"):
    params_store.read_model_config(tmp_path)
  (tmp_path / "model_config.json").write_text("{oops")
  with pytest.raises(ValueError, match="model_config.json: invalid JSON"):
    params_store.read_model_config(tmp_path)
  (tmp_path / "model_config.json").write_text(json.dumps({"llm": {"hidden": 3}}))
  with pytest.raises(ValueError, match="model_config.json: not a ModelConfig.*hidden"):
    params_store.read_model_config(tmp_path)
  (tmp_path / "model_config.json").write_text(json.dumps(C.model_config_to_dict(tiny.MODEL)))
  with pytest.raises(FileNotFoundError, match="params not found"):
    params_store.restore_all(tmp_path)
  with pytest.raises(FileNotFoundError, match="holds no parameters"):
    params_store.resolve_params_source(tmp_path)
  with pytest.raises(FileNotFoundError, match="missing does not exist"):
    params_store.resolve_params_source(tmp_path / "missing")

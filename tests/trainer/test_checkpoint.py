"""Orbax checkpoints (docs/jax_practices.md item 6): restore onto another mesh, fall back from a
broken newest step, params-only init from several sources, and the inference export."""
import functools
import json
import logging

import jax
import numpy as np
import pytest

from acformer_jax import sharding
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax import params_store
from acformer_jax.trainer import checkpoint as ckpt_lib
from acformer_jax.trainer import experiment, initialize, optim, state as S
from tests.trainer import tiny

MODEL = MultimodalLM(tiny.MODEL)
TX, _ = optim.make_optimizer({"lr": 1e-3}, 10)
STATE_FN = S.make_state_fn(MODEL, tiny.MODEL, TX, experiment.STAGE1_TRAINABLE)


@functools.lru_cache(maxsize=None)
def _abstract(mesh):
  return S.abstract_state(STATE_FN, mesh)


def _random_state(mesh, seed):
  """Random numbers in every leaf (no compile), placed on ``mesh``'s shardings."""
  abstract, shardings = _abstract(mesh)
  rs = np.random.RandomState(seed)
  host = jax.tree.map(lambda a: np.asarray(rs.randn(*a.shape) * 3).astype(a.dtype), abstract)
  return jax.device_put(host, shardings), abstract


def _equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _store(path, every=1, keep=5):
  return ckpt_lib.CheckpointStore(path, save_every=every, keep=keep)


def test_save_on_one_mesh_restore_on_another(tmp_path):
  state, _ = _random_state(sharding.make_mesh((8, 1, 1)), 0)
  store = _store(tmp_path)
  assert store.save(7, state, {"epoch": 0, "position": 56}, {"train": {"steps": 9}})
  store.close()
  target = _abstract(sharding.make_mesh((2, 2, 2)))[0]
  got = _store(tmp_path).restore_latest(target)
  assert got.step == 7 and got.config == {"train": {"steps": 9}}
  assert ckpt_lib.data_state_for_this_process(got.data_state) == {"epoch": 0, "position": 56}
  _equal(got.state, jax.device_get(state))
  up = got.state.params["llm"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert up.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}


def test_keep_n_and_interval(tmp_path):
  state, _ = _random_state(sharding.make_mesh((8, 1, 1)), 0)
  store = _store(tmp_path, every=2, keep=2)
  saved = [s for s in range(1, 8) if store.save(s, state, {}, {})]
  store.close()
  assert saved == [2, 4, 6]
  assert _store(tmp_path, every=2, keep=2).all_steps() == [4, 6]


def test_broken_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  mesh = sharding.make_mesh((8, 1, 1))
  store = _store(tmp_path)
  states = {}
  for step in (1, 2, 3):
    states[step], abstract = _random_state(mesh, step)
    store.save(step, states[step], {"position": step}, {})
  store.close()
  # Step 3 is committed but its array files are damaged; a half-written step 4 is left
  # behind in Orbax's temporary-directory form (what SIGKILL during a save leaves).
  for f in (tmp_path / "3" / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"\0" * 7)
  (tmp_path / "4.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
  with caplog.at_level(logging.WARNING, logger="acformer_jax.trainer.checkpoint"):
    store = _store(tmp_path)
    got = store.restore_latest(abstract)
  assert got.step == 2
  _equal(got.state, jax.device_get(states[2]))
  assert "step 3" in caplog.text and "falling back" in caplog.text
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith("corrupt_3_")]
  assert store.all_steps() == [1, 2]
  # Training continues: step 3 can be written again and is then the newest.
  assert store.save(3, states[3], {"position": 3}, {})
  store.close()
  assert _store(tmp_path).restore_latest(abstract).step == 3


def test_init_from_params_only_sources_and_inference_export(tmp_path):
  mesh = sharding.make_mesh((8, 1, 1))
  stage1, _ = _random_state(mesh, 1)     # a "stage-1 run": its connector is wanted
  store = _store(tmp_path / "run1" / "checkpoints")
  store.save(5, stage1, {}, {})
  store.close()
  # A params-only export (from one device: nothing replicated to slice): its LLM is wanted.
  other, _ = _random_state(sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]), 2)
  exported = ckpt_lib.export_for_inference(tmp_path / "export", other.params, tiny.MODEL,
                                           experiment_config={"note": "x"})
  assert json.loads((exported / "experiment_config.json").read_text()) == {"note": "x"}

  mesh2 = sharding.make_mesh((2, 2, 2))
  abstract, shardings = _abstract(mesh2)
  init_cfg = experiment.base_config().init
  init_cfg.connector = f"orbax:{tmp_path / 'run1'}"
  init_cfg.llm = f"orbax:{exported}"
  calls = []

  def random_params(rng):
    calls.append(rng)
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract.params)

  params = initialize.initial_params(init_cfg, random_params, abstract.params, shardings.params,
                                     tiny.MODEL, jax.random.key(0))
  _equal(params["connector"], jax.device_get(stage1.params["connector"]))
  _equal(params["llm"], jax.device_get(other.params["llm"]))
  _equal(params["vision"], jax.tree.map(np.zeros_like, jax.device_get(stage1.params["vision"])))
  assert params["llm"]["embed_tokens"]["embedding"].sharding == \
      shardings.params["llm"]["embed_tokens"]["embedding"]
  # The export is the inference layout: generate/evaluate can load it.
  from acformer_jax.inference import loading
  loaded = loading.load_for_inference(exported, require_tokenizer=False)
  _equal(loaded.params, jax.device_get(other.params))


def test_bad_sources_give_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="init.connector='hf_llama:/x'"):
    experiment.parse_source("hf_llama:/x", "connector")
  with pytest.raises(ValueError, match="expected 'orbax:<path>"):
    experiment.parse_source("/just/a/path", "llm")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    params_store.resolve_params_source(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no parameters"):
    params_store.resolve_params_source(tmp_path / "empty")
  # Shape mismatch names the subtree and the path.
  state, _ = _random_state(sharding.make_mesh((8, 1, 1)), 0)
  store = _store(tmp_path / "run")
  store.save(1, state, {}, {})
  store.close()
  wider = _abstract(sharding.make_mesh((8, 1, 1)))[0].params["connector"]
  wider = jax.tree.map(lambda a: jax.ShapeDtypeStruct((a.shape[0] + 8,) + a.shape[1:], a.dtype,
                                                      sharding=a.sharding), wider)
  with pytest.raises(ValueError, match="cannot load params/connector from .*Requested shape"):
    params_store.restore(tmp_path / "run", wider, prefix=("connector",))


def test_resuming_a_different_model_is_refused(tmp_path):
  from acformer_jax.trainer import loop
  from acformer_jax.trainer.validate import ConfigError
  state, _ = _random_state(sharding.make_mesh((8, 1, 1)), 0)
  store = _store(tmp_path)
  store.save(1, state, {}, {"model": {"connector": {"num_queries": 64}}})
  store.wait()
  loop.check_same_model(store, {"model": {"connector": {"num_queries": 64}}})
  with pytest.raises(ConfigError, match=r"different model \(config.model fields \['connector'\]"):
    loop.check_same_model(store, {"model": {"connector": {"num_queries": 144}}})
  store.close()

"""Checkpoint integrity (issue #15 item 8) and the NaN guard that checks what it saves (item 9):
flipped bytes in the newest checkpoint or in a params export are caught by the recorded
checksums, and a run with an absurd learning rate never saves a non-finite state."""
import json
import logging
import pathlib

import jax
import numpy as np
import pytest

from acformer_jax import integrity, sharding
from acformer_jax import params_store
from acformer_jax.trainer import checkpoint as ckpt_lib
from acformer_jax.trainer import experiment, initialize, loop
from acformer_jax.trainer.validate import ConfigError
from tests.trainer import test_checkpoint as tc
from tests.trainer import tiny


def _flip(files, n=400, seed=0):
  """XORs ``n`` bytes spread over ``files`` (sizes unchanged); returns the files touched."""
  files = sorted(f for f in files if f.is_file() and f.stat().st_size > 0)
  assert files
  rs = np.random.RandomState(seed)
  per = max(1, n // len(files))
  for f in files:
    raw = bytearray(f.read_bytes())
    size = len(raw)
    for pos in rs.choice(size, size=min(per, size), replace=False):
      raw[pos] ^= int(rs.randint(1, 256))
    f.write_bytes(bytes(raw))
    assert f.stat().st_size == size
  return files


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(jax.device_get(tree))
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_checksums_do_not_depend_on_the_mesh():
  state8, _ = tc._random_state(sharding.make_mesh((8, 1, 1)), 0)  # pylint: disable=protected-access
  state222 = jax.device_put(jax.device_get(state8), tc._abstract(sharding.make_mesh((2, 2, 2)))[1])  # pylint: disable=protected-access
  a, b = integrity.checksums(state8), integrity.checksums(state222)
  assert a == b and "params/llm/embed_tokens/embedding" in a
  host = jax.tree.map(np.array, jax.device_get(state8))
  host.params["llm"]["norm"]["scale"][0] += 1.0
  c = integrity.checksums(host)
  assert [k for k in a if a[k] != c[k]] == ["params/llm/norm/scale"]


def _flip_values(item_dir, leaf, ocdbt):
  """Flips exponent bits of every 7th value of one stored array, re-encoded through
  tensorstore: the container stays valid, so only the checksums can tell."""
  import tensorstore as ts
  kv = {"driver": "file", "path": str(item_dir / leaf)}
  if ocdbt:
    kv = {"driver": "ocdbt", "base": f"file://{item_dir}/", "path": f"{leaf}/"}
  arr = ts.open({"driver": "zarr", "kvstore": kv}).result()
  values = np.array(arr.read().result())
  values.reshape(-1).view(np.uint32)[::7] ^= np.uint32(0x7F800000)
  arr.write(values).result()


def test_flipped_bytes_in_the_newest_checkpoints_fall_back_to_the_previous(tmp_path, caplog):
  mesh = sharding.make_mesh((8, 1, 1))
  store = tc._store(tmp_path)  # pylint: disable=protected-access
  states = {}
  for step in (1, 2, 3):
    states[step], abstract = tc._random_state(mesh, step)  # pylint: disable=protected-access
    store.save(step, states[step], {"position": step}, {})
  store.close()
  _flip((tmp_path / "3" / "state").rglob("d/*"))  # 400 raw bytes, file sizes unchanged
  _flip_values(tmp_path / "2" / "state", "params.llm.embed_tokens.embedding", ocdbt=True)
  with caplog.at_level(logging.WARNING, logger="acformer_jax.trainer.checkpoint"):
    store = tc._store(tmp_path)  # pylint: disable=protected-access
    got = store.restore_latest(abstract)
  store.close()
  assert got.step == 1
  tc._equal(got.state, jax.device_get(states[1]))  # pylint: disable=protected-access
  assert _all_finite(got.state)
  assert "step 3" in caplog.text and "falling back" in caplog.text
  assert "IntegrityError: checkpoint step 2" in caplog.text
  assert "params/llm/embed_tokens/embedding" in caplog.text
  assert sorted(p.name.split("_")[1] for p in tmp_path.iterdir() if p.name.startswith("corrupt_")) \
      == ["2", "3"]


def test_flipped_bytes_in_a_params_export_name_the_array(tmp_path):
  from acformer_jax.inference import loading
  state, _ = tc._random_state(sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]), 3)  # pylint: disable=protected-access
  exported = ckpt_lib.export_for_inference(tmp_path / "export", state.params, tiny.MODEL)
  rec = json.loads((exported / "params_checksums.json").read_text())
  assert rec["algorithm"] == integrity.ALGORITHM and "llm/norm/scale" in rec["arrays"]
  # Flip bits inside one array's stored values (re-encoded, so the zstd container stays
  # valid and only the checksums can tell): the error names that array.
  _flip_values(exported / "params", "llm.embed_tokens.embedding", ocdbt=False)
  with pytest.raises(integrity.IntegrityError, match=r"llm/embed_tokens/embedding"):
    loading.load_for_inference(exported, require_tokenizer=False)
  abstract, _ = tc._abstract(sharding.make_mesh((8, 1, 1)))  # pylint: disable=protected-access
  src = experiment.parse_source(f"orbax:{exported}", "llm")
  with pytest.raises(ConfigError, match=r"init.llm: .*llm/embed_tokens/embedding"):
    initialize.load_subtree("llm", src, abstract.params["llm"], tiny.MODEL)
  # The connector is undamaged: loading only it passes.
  ok = params_store.restore(exported, abstract.params["connector"], prefix=("connector",))
  tc._equal(ok, jax.device_get(state.params["connector"]))  # pylint: disable=protected-access


def test_nan_guard_never_saves_a_non_finite_update(demo, tmp_path):
  """lr=1e39 with a save every step: the step after the sane ones turns the parameters
  non-finite while its loss and gradient norm (computed before the update) are finite."""
  data_dir, tok = demo
  work = tmp_path / "run"
  sane = tiny.experiment_config(data_dir, tok, steps=2, every=1)
  assert loop.run(sane, work)["status"] == "completed"
  wild = tiny.experiment_config(data_dir, tok, steps=6, every=1)
  wild.train.optimizer.lr = 1e39
  summary = loop.run(wild, work)
  assert summary["status"] == "nan" and summary["last_checkpoint"] == 2
  b = loop.build(sane)
  store = ckpt_lib.CheckpointStore(work / "checkpoints", save_every=1, keep=10)
  assert store.all_steps() == [1, 2]
  for step in store.all_steps():
    assert _all_finite(store.restore(step, b.abstract_state).state), step
  store.close()
  again = tiny.experiment_config(data_dir, tok, steps=4, every=1)
  resumed = loop.run(again, work)
  assert resumed["status"] == "completed" and resumed["step"] == 4
  assert np.isfinite(resumed["last_metrics"]["loss"])
  assert pathlib.Path(resumed["workdir"]) == work

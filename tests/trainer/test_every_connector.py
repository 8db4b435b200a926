"""Every paper connector end to end on the demo: 2 training steps, the export, generation
on the held-out questions and their score (the in-job evaluation runs ``generate`` on the
exported parameters and ``evaluate score``'s scorer), then the export reloads."""
import json

import numpy as np
import pytest

from acformer_jax import load_pretrained
from acformer_jax import config as C
from acformer_jax.trainer import experiment, loop
from tests.trainer import tiny

# Budgets that fit the tiny 4x4-patch, 2-head tower: squares for the pooling family.
BUDGET = {"pooling": 4, "pooling_pr": 4, "c_abstractor": 4}


# Three presets in the default suite (the anchor connector, a convolutional and a pruning one);
# the other five are opt-in (``launch/test.sh --slow``): each connector also has its unit
# tests in tests/models/test_connectors.py.
DEFAULT = ("acformer", "c_abstractor", "top_p")


@pytest.mark.parametrize("kind", [k if k in DEFAULT else pytest.param(k, marks=pytest.mark.slow)
                                  for k in experiment.PAPER_CONNECTORS])
def test_connector_trains_exports_generates_and_scores(demo, tmp_path, kind):
  data_dir, tok = demo
  c = tiny.experiment_config(data_dir, tok, steps=2, every=100)
  c.model.connector.update(type=kind, num_queries=BUDGET.get(kind, 4), abstractor_depth=1)
  c.checkpoint.export = True
  c.eval.update(benchmark="demo", num_questions=8, batch_size=8)
  summary = loop.run(c, tmp_path / "run")
  assert summary["status"] == "completed", summary
  metrics = summary["eval"]["metrics"]
  assert metrics["num_questions"] == 8 and metrics["num_missing"] == 0
  assert 0.0 <= metrics["accuracy"] <= 100.0  # percent
  model, params = load_pretrained(tmp_path / "run" / "export")
  assert model.config.connector.type == kind
  nv = C.num_visual_tokens(model.config)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in __import__("jax").tree.leaves(params))
  saved = json.loads((tmp_path / "run" / "export" / "model_config.json").read_text())
  assert saved["connector"]["type"] == kind and nv > 0

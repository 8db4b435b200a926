"""The demo is a package of its own: nothing in trainer/ imports it or branches on it, and
the evaluation registry reaches its exporter and scorer through the benchmark entry."""
import ast
import pathlib

import pytest

import acformer_jax
from acformer_jax.evals import registry

PKG = pathlib.Path(acformer_jax.__file__).parent


def _imports(path: pathlib.Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("path", sorted((PKG / "trainer").glob("*.py")), ids=lambda p: p.name)
def test_trainer_knows_nothing_of_the_demo(path):
  assert not [m for m in _imports(path) if m.startswith("acformer_jax.demo")], path
  source = path.read_text()
  assert '"demo"' not in source and "'demo'" not in source, f"{path}: a demo branch"


def test_demo_benchmark_exports_and_scores_through_the_registry(tmp_path):
  bench = registry.get("demo")
  data = bench.export(tmp_path, image_size=56, num_test=10, seed=0)
  questions = [l for l in (data / "questions.jsonl").read_text().splitlines() if l]
  truth = [l for l in (data / "ground_truth.jsonl").read_text().splitlines() if l]
  assert len(questions) == len(truth) == 10 and len(list((data / "images").iterdir())) == 10
  import json  # pylint: disable=import-outside-toplevel
  answers = tmp_path / "answers.jsonl"
  answers.write_text("".join(json.dumps({"question_id": json.loads(t)["question_id"],
                                         "text": json.loads(t)["answer"]}) + "\n" for t in truth))
  result = bench.score(answers, data)
  assert result.metrics["accuracy"] == 100.0
  assert all(f"prior_{c}" in result.metrics for c in ("color", "shape", "count", "position",
                                                      "existence"))

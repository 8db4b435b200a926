"""bench CLI: speed / mfu / torch / plot smoke tests on tiny models; FLOPs vs XLA."""
import json
import textwrap

import pytest

from acformer_jax import bench
from acformer_jax import config as C
from acformer_jax.benchmarking import flop_count, timing, workload
from acformer_jax.trainer import flops as flops_lib

TINY = textwrap.dedent("""
    from acformer_jax.trainer import experiment
    def get_config():
      c = experiment.base_config(); experiment.stage1(c)
      c.model.vision.update(image_size=112, patch_size=14, hidden_size=128, intermediate_size=512,
                            num_layers=2, num_heads=4)
      c.model.llm.update(vocab_size=512, hidden_size=256, intermediate_size=688, num_layers=2,
                         num_heads=4, num_kv_heads=4)
      c.model.connector.update(type="acformer", num_queries=16, depth=1, heads=2, dim_head=64)
      c.model.image_token_id = 512
      c.model.update(dtype="float32", remat_policy="none", scan_layers=False)
      c.train.update(global_batch_size=2, steps=10)
      c.bench = dict(text_len=16, connectors="mlp2x_gelu,acformer", reps=1, warmup=1)
      return c
    """)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  path = tmp_path_factory.mktemp("cfg") / "tiny.py"
  path.write_text(TINY)
  return str(path)


def _last_json(out: str) -> dict:
  return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def speed_result(tiny_config, tmp_path_factory):
  path = tmp_path_factory.mktemp("out") / "speed.json"
  import contextlib
  import io
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert bench.main(["speed", "--config", tiny_config, "--reps", "2", "--json", str(path)]) == 0
  res = _last_json(buf.getvalue())
  assert json.loads(path.read_text()) == res
  return res, buf.getvalue(), path


def test_speed_json_and_flops(speed_result, tiny_config):
  res, text, _ = speed_result
  assert "speedup" in text and "FLOP-ideal" in text
  assert res["command"] == "speed" and res["baseline"] == "mlp2x_gelu"
  rows = {r["connector"]: r for r in res["connectors"]}
  assert set(rows) == {"mlp2x_gelu", "acformer"}
  keys = {"visual_tokens", "seq_len", "step_s", "tokens_per_s", "model_flops", "vit_flops",
          "connector_flops", "llm_flops", "executed_flops", "xla_flops", "xla_rel_diff",
          "speedup", "flop_ideal_speedup", "fraction_of_ideal", "timing"}
  for r in rows.values():
    assert keys <= set(r), keys - set(r)
    assert len(r["timing"]["samples_s"]) == 2 and r["step_s"] > 0
    # The analytic count matches XLA's cost analysis of the unrolled step.
    assert abs(r["xla_rel_diff"]) < 0.05, r["xla_rel_diff"]
  assert rows["mlp2x_gelu"]["visual_tokens"] == 64 and rows["acformer"]["visual_tokens"] == 17
  assert rows["mlp2x_gelu"]["seq_len"] == 1 + 64 + 15
  cfg = workload.load_experiment(tiny_config)
  mc = workload.variant(workload.model_config(cfg), "acformer")
  want = flops_lib.train_step_flops(mc, 2, 1 + 17 + 15, llm_trainable=False)
  assert rows["acformer"]["model_flops"] == pytest.approx(want.total)
  ideal = rows["mlp2x_gelu"]["model_flops"] / rows["acformer"]["model_flops"]
  assert rows["acformer"]["flop_ideal_speedup"] == pytest.approx(ideal)
  assert rows["acformer"]["speedup"] == pytest.approx(
      rows["mlp2x_gelu"]["step_s"] / rows["acformer"]["step_s"])


def test_executed_flops_counts_the_masked_attention_half(tiny_config):
  cfg = workload.variant_config(workload.load_experiment(tiny_config), "mlp2x_gelu",
                                max_length=100, global_batch=3)
  ex = workload.build(cfg)
  m = flop_count.model_flops(ex.mc, 3, 100, llm_trainable=False).total
  assert ex.padded_flops.total == pytest.approx(m)
  extra = 3 * 3 * 2 * 2.0 * 100 ** 2 * 256  # 3x (fwd+bwd), batch 3, layers 2, 2 T^2 H hd
  assert flop_count.executed_flops(ex) == pytest.approx(m + extra)
  # head_positions reaches the count (it used to be dropped).
  h = flop_count.model_flops(ex.mc, 3, 100, llm_trainable=False, head_positions=10).total
  assert m - h == pytest.approx(2 * 3 * 90 * 2.0 * 256 * 512)  # 2x (frozen), 90 fewer head rows


def test_mfu_smoke(tiny_config, capsys):
  assert bench.main(["mfu", "--config", tiny_config, "--connectors", "acformer", "--reps", "1",
                     "--warmup", "0", "--matmul_n", "256", "--nobf16", "--json", "-"]) == 0
  res = _last_json(capsys.readouterr().out)
  assert res["peak_f32_flops"] == res["matmul_f32"]["matmul_f32_256"]["best_flops"] > 0
  (row,) = res["connectors"]
  assert row["mfu"] == pytest.approx(row["achieved_flops_per_s"] / res["peak_f32_flops"])
  assert row["hfu"] > row["mfu"] > 0


def test_plot(speed_result, tmp_path):
  _, _, speed_path = speed_result
  acc = tmp_path / "acc.json"
  acc.write_text(json.dumps({"mlp2x_gelu": 0.61, "acformer": 0.64, "other": 0.1}))
  out = tmp_path / "fig1.png"
  assert bench.main(["plot", "--speed", str(speed_path), "--accuracy", str(acc),
                     "--out", str(out)]) == 0
  assert out.read_bytes()[:4] == b"\x89PNG"
  score = tmp_path / "score.txt"
  score.write_text("demo summary line\n" + json.dumps({"benchmark": "demo", "accuracy": 55.0, "num_questions": 5}))
  res = plot_main(["plot", "--speed", str(speed_path), "--score", f"acformer={score}",
                   "--out", str(out), "--json", "-"])
  assert res["points"] == [{"connector": "acformer", "visual_tokens": 17, "accuracy": 55.0,
                            "step_s": pytest.approx(res["points"][0]["step_s"])}]
  acc.write_text(json.dumps({"nothing": 1.0}))
  assert bench.main(["plot", "--speed", str(speed_path), "--accuracy", str(acc),
                     "--out", str(out)]) == 2


def plot_main(argv):
  import contextlib
  import io
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert bench.main(argv) == 0
  return _last_json(buf.getvalue())


def test_connector_names_batch_and_errors(tiny_config, capsys):
  base = C.ConnectorConfig(type="acformer", num_queries=144, depth=6)
  assert workload.connector_config("acformer64", base).num_queries == 64
  c = workload.connector_config("pooling_pr:16", base)
  assert (c.type, c.num_queries, c.depth) == ("pooling_pr", 16, 6)
  assert workload.connector_config("acformer", base) == base
  with pytest.raises(ValueError, match="expected a preset"):
    workload.connector_config("mlp3x", base)
  mc = workload.variant(workload.model_config(workload.load_experiment(tiny_config)), "acformer")
  b = workload.make_batch(mc, 2, 16)
  assert b["input_ids"].shape == (2, 1 + 17 + 15) and b["images"].shape == (2, 1, 112, 112, 3)
  assert b["segment_ids"].min() == 1 and b["image_mask"].all()
  assert (b["labels"][:, :18] == -100).all() and (b["labels"][:, 18:] >= 3).all()
  assert (b["input_ids"][:, 1:18] == mc.image_token_id).all()
  assert bench.main(["speed", "--config", "/nonexistent.py"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert bench.main(["speedy"]) == 2 and "expected one command" in capsys.readouterr().err
  assert bench.main(["speed", "--reps=x"]) == 2 and "--reps" in capsys.readouterr().err
  assert bench.main(["--help"]) == 0 and "--decode_batches" in capsys.readouterr().out


def test_timing_interleaves_and_summarizes():
  calls = []
  res = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                           reps=3, warmup=1)
  assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
  assert len(res["a"]["samples_s"]) == 3
  s = timing.summarize([3.0, 1.0, 2.0, 10.0], [0.0, 0.1, 0.0, 1.5])
  assert s["median_s"] == 2.5 and s["quiet_median_s"] == 2.0 and s["quiet_samples"] == 3


def test_torch_smoke(capsys, tmp_path):
  pytest.importorskip("transformers")
  assert bench.main(["torch", "--preset", "tiny", "--reps", "1", "--decode_reps", "1",
                     "--decode_batches", "2", "--json", "-", "--profile", str(tmp_path)]) == 0
  res = _last_json(capsys.readouterr().out)
  prof = json.loads((tmp_path / "profile.json").read_text())
  for side in ("jax", "torch"):  # the ops of one step, by category, GEMM FLOPs counted
    assert prof["train"][side]["op_s"] > 0 and prof["train"][side]["flops"]["gemm"] > 0
    assert prof["decode"][0][side]["wall_s"] > 0
  assert prof["train"]["jax"]["unmatched_s"] == 0.0 and prof["decode"][0]["batch"] == 2
  assert "| gemm |" in (tmp_path / "profile.txt").read_text()
  assert res["max_logit_diff"] < 1e-4
  assert res["train"]["speedup"] > 0 and res["train"]["seq_len"] == 1 + 16 + 8
  (dec,) = res["decode"]
  assert dec["batch"] == 2 and dec["greedy_token_agreement"] == 1.0
  assert dec["jax_tokens_per_s"] > 0 and dec["torch_tokens_per_s"] > 0
  assert res["train"]["speedup_vs_stock_full_head"] > 0 and "jax_decode_only_tokens_per_s" in dec


PACKING_TINY = textwrap.dedent("""
    from acformer_jax.trainer import experiment
    def get_config():
      c = experiment.base_config(); experiment.stage1(c)
      c.model.vision.update(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                            num_layers=2, num_heads=4)
      c.model.llm.update(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=2, num_kv_heads=2, max_position_embeddings=256)
      c.model.connector.update(type="acformer", num_queries=4, depth=1, heads=2, dim_head=16)
      c.model.image_token_id = 128
      c.model.update(dtype="float32", remat_policy="none", scan_layers=True)
      c.bench = dict(row_length=64, length_scale=0.1, variants="acformer144=acformer:4",
                     layouts="s2_packed,s2_padded", rows_stage1=2, rows_stage2=2,
                     text_sweep="1", reps=1, warmup=0, seed=0)
      return c
    """)


def test_packing_samples_batches_and_ratios():
  from acformer_jax import batch as B
  from acformer_jax.benchmarking import packing_bench as pb
  mc = C.ModelConfig(vision=C.VisionConfig(image_size=56, patch_size=14, hidden_size=32,
                                           intermediate_size=64, num_layers=2, num_heads=4),
                     llm=C.LLMConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                     num_layers=1, num_heads=2, num_kv_heads=2),
                     connector=C.ConnectorConfig(type="mlp2x_gelu"), image_token_id=128)
  s = pb.make_samples(mc, 2, 300, length_scale=0.1, row_length=64, seed=0)
  again = pb.make_samples(mc, 2, 300, length_scale=0.1, row_length=64, seed=0)
  assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(s, again))
  assert 0.8 < sum(x["image"] is not None for x in s) / 300 < 1.0  # ShareGPT is text-only
  shape = B.BatchShape(2, 64, 3, 56)
  packed = pb.make_batches(s, shape, packed=True, count=3)
  padded = pb.make_batches(s, B.BatchShape(2, 64, 1, 56), packed=False, count=3)
  for x in packed + padded:
    B.check(x)
  assert all(B.samples(x) == 2 for x in padded)  # one sample per row
  assert sum(B.samples(x) for x in packed) > sum(B.samples(x) for x in padded)
  assert sum(B.real_tokens(x) for x in packed) > 1.3 * sum(B.real_tokens(x) for x in padded)
  with pytest.raises(ValueError, match="bench.variants"):
    pb.variants({"variants": "acformer999=acformer:4"})


def test_packing_bench_end_to_end(tmp_path, capsys):
  cfg = tmp_path / "tiny_packing.py"
  cfg.write_text(PACKING_TINY)
  assert bench.main(["packing", "--config", str(cfg), "--json", "-"]) == 0
  out = capsys.readouterr().out
  res = _last_json(out)
  assert set(res["variants"]) == {"s2_packed_acformer144", "s2_padded_acformer144"}
  pk, pd = res["variants"]["s2_packed_acformer144"], res["variants"]["s2_padded_acformer144"]
  assert pk["images_per_row"] == 7 and pd["images_per_row"] == 1  # the recipe's M
  assert pk["samples_per_step"] > pd["samples_per_step"] == 2
  assert pk["token_efficiency"] > pd["token_efficiency"]
  assert pk["padded_flops"] > pd["padded_flops"] and pk["real_flops"] > pd["real_flops"]
  (r,) = res["ratios"]
  assert r["measured"] == pytest.approx(pk["real_tokens_per_s"] / pd["real_tokens_per_s"])
  assert r["target"] == ">= 2.5x" and "packed / padded real tokens/s" in out
  (w,) = res["sweep_7b"]
  assert w["connectors"]["acformer144"]["token_efficiency"] > 0.9

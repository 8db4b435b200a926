"""benchmarking/op_profile.py: HLO op classes and FLOPs, trace parsing, torch op classes."""
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax.benchmarking import hlo_ops, op_profile as op


def _f(a, b, img, ker):
  x = jax.nn.gelu(jnp.einsum("bij,bjk->bik", a, b))
  y = jax.lax.conv_general_dilated(img, ker, (2, 2), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return x.sum(0).T + 1.0, y


def _args():
  r = np.random.default_rng(0)
  shapes = ((2, 64, 32), (2, 32, 48), (1, 16, 16, 3), (3, 3, 3, 8))
  return tuple(r.standard_normal(s, np.float32) for s in shapes)


def test_hlo_table_counts_gemm_and_conv_flops():
  text = jax.jit(_f).lower(*_args()).compile().as_text()
  table = hlo_ops.hlo_op_table(text)
  by_cat = {}
  for row in table.values():
    by_cat[row["category"]] = by_cat.get(row["category"], 0.0) + row["flops"]
  assert by_cat["gemm"] == 2 * 2 * 64 * 48 * 32  # batch 2, [64, 32] x [32, 48]
  assert by_cat["conv"] == 2 * (7 * 7 * 8) * (3 * 3 * 3)
  assert hlo_ops.module_name(text) == "jit__f"


def test_parse_instruction_and_classify():
  ins = hlo_ops.parse_instruction("  ROOT %w.1 = (s32[], f32[2,3]{1,0}) while(%t), condition=%c, "
                             "body=%b")
  assert ins["name"] == "w.1" and ins["opcode"] == "while" and ins["operands"] == ["t"]
  assert hlo_ops.classify_hlo("while") == "control"
  assert hlo_ops.classify_hlo("fusion", {"parameter", "transpose", "copy"}) == "data_movement"
  assert hlo_ops.classify_hlo("fusion", {"parameter", "exp", "reduce"}) == "elementwise"
  assert hlo_ops.classify_hlo("all-reduce-start") == "collective"
  assert hlo_ops.dims("f32[4,704,512]{2,1,0}") == [4, 704, 512] and hlo_ops.dims("f32[]") == []


def test_trace_breakdown_matches_every_event(tmp_path):
  args = _args()
  compiled = jax.jit(_f).lower(*args).compile()
  text = compiled.as_text()
  jax.block_until_ready(compiled(*args))
  events, wall = op.trace_jax(lambda: jax.block_until_ready(compiled(*args)), str(tmp_path))
  assert events and wall > 0
  b = op.with_wall(op.jax_breakdown(events, {hlo_ops.module_name(text): hlo_ops.hlo_op_table(text)}), wall)
  assert b["unmatched_s"] == 0.0 and b["op_s"] > 0 and "gemm" in b["seconds"]
  assert b["op_s"] + b["idle_s"] <= b["span_s"] * (1 + 1e-9) and b["span_s"] <= wall
  assert b["flops"]["gemm"] == 2 * 2 * 64 * 48 * 32 and b["flops_per_s"]["gemm"] > 0
  assert abs(b["untraced_s"] - (b["wall_s"] - b["op_s"])) < 1e-12
  assert "| gemm |" in op.table({"jax": b})
  assert any(t["op"] == "dot (batched)" or t["category"] == "gemm" for t in b["top"])
  assert "jax: " in op.top_table({"jax": b})


def test_attribute_splits_overlaps():
  secs, covered = op.attribute([("a", 0.0, 2.0), ("b", 1.0, 3.0), ("a", 5.0, 6.0)])
  assert secs == {"a": 2.5, "b": 1.5} and covered == 4.0


def test_torch_classes_and_subtract():
  assert op.classify_torch("aten::addmm") == "gemm"
  assert op.classify_torch("aten::mkldnn_convolution") == "conv"
  assert op.classify_torch("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
  assert op.classify_torch("aten::_foreach_addcdiv_") == "optimizer"
  assert op.classify_torch("aten::copy_") == "data_movement"
  assert op.classify_torch("aten::t") == "data_movement"
  assert op.classify_torch("aten::tanh") == "elementwise"
  assert op.classify_torch("autograd::engine::evaluate_function: MmBackward0") == "framework"
  full = op.torch_breakdown([("aten::mm", 3.0, 6e9), ("aten::add", 1.0, 0.0)])
  one = op.torch_breakdown([("aten::mm", 1.0, 2e9)])
  d = op.subtract(op.with_wall(full, 5.0), op.with_wall(one, 1.0), 2)
  assert d["seconds"] == {"gemm": 1.0, "elementwise": 0.5} and d["wall_s"] == 2.0
  assert d["flops_per_s"]["gemm"] == 2e9
  assert full["top"][0] == {"op": "aten::mm", "category": "gemm", "s": 3.0, "gflop_per_s": 2.0}
  assert d["top"][0]["op"] == "aten::mm" and d["top"][0]["s"] == 1.0

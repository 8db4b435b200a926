"""XLA:CPU flags for cheap compiles in tests (conftest sets them for the test process; tests
that start JAX subprocesses with their own ``XLA_FLAGS`` pass them on).

Tests are dominated by XLA:CPU compile time, not run time:
  * no LLVM backend optimisation (about halves LLVM time);
  * the classic elemental IR emitters instead of XLA:CPU's MLIR fusion emitters (compiles
    about 2-3x faster on the tiny test programs; the same HLO fusions, only code generation
    differs). Results stay within the tests' float32 tolerances.
"""
FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
         "--xla_cpu_use_fusion_emitters=false")


def with_flags(flags: str = "") -> str:
  """``flags`` plus every flag of ``FLAGS`` that it does not set itself."""
  out = flags.split()
  for f in FLAGS:
    if not any(o.split("=")[0] == f.split("=")[0] for o in out):
      out.append(f)
  return " ".join(out)

"""The real runs on TPU: Vicuna-7B/13B x stage 1/2 x connector, with a checked TPU recipe.

Each recipe (topology, mesh, rows per chip, remat policy) was compiled for its topology with
``python -m acformer_jax.aot`` and fits; the measured per-chip memory is in docs/aot.md. The
model, data and optimizer settings come unchanged from ``configs/vicuna{7b,13b}_stage{1,2}.py``
(LLaVA-1.5 recipe, ``docs/method.md`` 2.1-2.2); only the parallelism fields are set here.

Argument: ``<size>_stage<n>_<connector>``, size ``7b`` | ``13b``, connector ``acformer144``
(AcFormer, 145 visual tokens), ``acformer256`` (257) or ``mlp2x_gelu`` (LLaVA-1.5, 576):

  python -m acformer_jax.aot --config configs/tpu_runs.py:7b_stage2_acformer144      # fits?
  launch/tpu_pod.sh --name acf --zone ZONE --accelerator v5p-32 up -- \\
      --config configs/tpu_runs.py:7b_stage2_acformer144 --workdir gs://BUCKET/ac144_s2 \\
      --config.init.params_from=orbax:gs://BUCKET/ac144_s1 --config.data.manual_dir=...

``config.recommended_topology`` is the default ``--topology`` of ``acformer_jax.aot``.
"""
import importlib.util
import pathlib

SIZES = ("7b", "13b")
CONNECTORS = ("acformer144", "acformer256", "mlp2x_gelu")

# (size, stage) -> recipe. Every stage packs into 2048-token rows; the global batch counts
# rows (``experiment.PACKING``: multiples of 16, ~LLaVA-1.5's 256 / 128 samples per step), so
# rows per chip = global batch / 16 chips / grad_accum: stage 1 1 (AcFormer-145), 2
# (AcFormer-257), 5 (MLP-576); stage 2 2, 2, 4. Stage 2 trains the LLM: fp32 master weights +
# Adam moments are 12 bytes per parameter, sharded over every chip (FSDP).
# Tokens per step (docs/aot.md, "Packed recipes"): 7B stage 2 AcFormer-145 32 rows x 2048 =
# 65,536 token slots (~96% real, ~167 samples, 2.806e15 padded FLOPs); MLP-576 64 x 2048 =
# 131,072 (~81% real, ~136 samples, 5.490e15). Per-chip memory of the packed 7B stage-2
# recipes (docs/aot.md, 2026-12-02): AcFormer-145 4.86 + 22.44 = 27.30 GiB, MLP-576 4.81 +
# 34.02 = 38.83 GiB of 95.74 (the padded recipe: 72.6 / 68.6 GiB). The 13B recipes moved to 16
# chips with packing and were not re-compiled. Run ``acformer_jax.aot`` before launching.
RECIPES = {
    ("7b", 1): dict(topology="v5p-32", mesh=(1, -1, 1), grad_accum=1, remat="minimal"),
    ("7b", 2): dict(topology="v5p-32", mesh=(1, -1, 1), grad_accum=1, remat="minimal"),
    ("13b", 1): dict(topology="v5p-32", mesh=(1, -1, 1), grad_accum=1, remat="minimal"),
    ("13b", 2): dict(topology="v5p-32", mesh=(1, -1, 1), grad_accum=1, remat="minimal"),
}


def _base(size: str, stage: int):
  path = pathlib.Path(__file__).resolve().parent / f"vicuna{size}_stage{stage}.py"
  spec = importlib.util.spec_from_file_location(f"_acformer_cfg_{size}_{stage}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse(arg: str):
  """``"7b_stage2_acformer144"`` -> ``("7b", 2, "acformer144")`` with a clear error otherwise."""
  parts = arg.split("_", 2)
  ok = (len(parts) == 3 and parts[0] in SIZES and parts[1] in ("stage1", "stage2")
        and parts[2] in CONNECTORS)
  if not ok:
    raise ValueError(f"configs/tpu_runs.py: argument {arg!r} must be <size>_stage<1|2>_<connector> "
                     f"with size in {SIZES} and connector in {CONNECTORS}, e.g. 7b_stage2_acformer144")
  return parts[0], int(parts[1][-1]), parts[2]


def get_config(arg: str = "7b_stage2_acformer144"):
  size, stage, connector = parse(arg)
  c = _base(size, stage).get_config(connector)
  r = RECIPES[(size, stage)]
  c.recommended_topology = r["topology"]
  c.mesh.shape = r["mesh"]
  c.train.grad_accum_steps = r["grad_accum"]
  c.model.remat_policy = r["remat"]
  return c

"""Convert: plan -> validate -> stream every tensor into its sharding -> self-check -> save.

Spec: ``docs/jax_practices.md`` items 3 (abstract-first), 7 (streaming, table-driven,
placed straight into the target sharding), 8 (verified by logits) and section 9.1-9.2.

Tensors are streamed by :mod:`acformer_jax.conversion.streaming` (each device reads only
the block it holds, so under ``jax.distributed`` every process reads and holds only its
share). The output is a params directory (:mod:`acformer_jax.params_store`; the trainer's
``init.params_from=orbax:DIR`` reads it too) plus ``conversion.json`` (provenance, used by
the exporter) and ``extras.safetensors`` (source tensors the model does not use, kept for
exact round trips), committed atomically.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax import config as config_lib
from acformer_jax import outputs
from acformer_jax import params_store
from acformer_jax import sharding as sharding_lib
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.conversion import streaming
from acformer_jax.conversion.keymaps import ConversionError, flatten_paths, unflatten_paths
from acformer_jax.models.connectors import Connector

log = logging.getLogger("acformer_jax.convert")
CONVERSION_FILE = "conversion.json"
EXTRAS_FILE = "extras.safetensors"


def with_param_dtype(plan: plan_lib.Plan, param_dtype: str = "auto") -> config_lib.ModelConfig:
  """The plan's config with ``param_dtype`` (``auto``: bfloat16 if every source tensor is,
  else float32) and the compute dtype set to match."""
  if param_dtype == "auto":
    param_dtype = plan_lib.widest_dtype(plan.source, plan.keymap)
  jnp.dtype(param_dtype)  # raises on a bad name
  return dataclasses.replace(plan.config, param_dtype=param_dtype, dtype=param_dtype)


def validate(plan: plan_lib.Plan, targets: Mapping[str, Any]) -> None:
  """One :class:`ConversionError` listing every problem (keys, shapes, dtypes, config)."""
  problems = list(plan.problems)
  wanted = {p: tuple(t.shape) for p, t in targets.items() if p.split("/")[0] not in plan.fresh}
  shapes = {k: plan.source.shape(k) for k in plan.source.keys()}
  try:
    plan.keymap.validate(shapes, wanted, what="x")
  except ConversionError as e:
    problems += [line.strip() for line in str(e).splitlines()[1:]]
  problems += plan_lib.check_dtypes(plan.source, plan.keymap, plan.declared_dtypes)
  if problems:
    raise ConversionError(
        f"{plan.format} input ({plan.source.describe()}) does not match what its config "
        f"describes:\n  " + "\n  ".join(problems))


def load_params(plan: plan_lib.Plan, targets: Mapping[str, Any], progress: bool = False
                ) -> Dict[str, jax.Array]:
  """Flat ``path -> jax.Array`` for every non-fresh target, tensor by tensor."""
  wanted = {p: t for p, t in targets.items() if p.split("/")[0] not in plan.fresh}
  return streaming.stream(plan.source, plan.keymap, wanted, progress=progress)


def init_fresh(cfg: config_lib.ModelConfig, tree: Any, part: str, seed: int) -> Any:
  """Initialises a fresh top-level subtree (only the connector) straight into its shardings."""
  if part != "connector":
    raise ValueError(f"only the connector can be initialised fresh, not {part!r}")
  v = cfg.vision
  features = jnp.zeros((1, v.num_patches + 1, v.hidden_size), jnp.float32)
  cls_attn = jnp.full((1, v.num_heads, v.num_patches), 1.0 / v.num_patches, jnp.float32)
  module = Connector(cfg)
  shardings = jax.tree.map(lambda t: t.sharding, tree[part])

  def init(rng):
    p_rng, c_rng = jax.random.split(rng)
    return nn.unbox(module.init({"params": p_rng}, features, cls_attn, rng=c_rng)["params"])
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def build_params(plan: plan_lib.Plan, mesh, param_dtype: str = "auto", seed: int = 0,
                 progress: bool = False):
  """``(ModelConfig, params)``: validated, loaded and sharded on ``mesh``."""
  cfg = with_param_dtype(plan, param_dtype)
  tree = params_store.target_tree(cfg, mesh)
  targets = flatten_paths(tree)
  validate(plan, targets)
  flat = load_params(plan, targets, progress=progress)
  params = unflatten_paths(flat)
  for part in plan.fresh:
    params[part] = init_fresh(cfg, tree, part, seed)
  return cfg, params


def write_checkpoint(output, cfg: config_lib.ModelConfig, params: Any, plan: plan_lib.Plan,
                     overwrite: bool = False, report: Optional[dict] = None) -> pathlib.Path:
  """Writes the params directory plus the conversion's metadata, committed atomically."""
  from acformer_jax.conversion import writer  # pylint: disable=import-outside-toplevel
  output = pathlib.Path(output).absolute()
  with params_store.atomic_directory(output, overwrite=overwrite, name="convert") as tmp:
    params_store.write(tmp, params, cfg, plan.tokenizer_dir)
    if jax.process_index() == 0:
      extras = {name: plan.source.read(key) for name, key in plan.extras.items()}
      if extras:
        writer.write_safetensors(tmp / EXTRAS_FILE, extras)
      info = dict(plan.info, format=plan.format, extras=sorted(extras), **(report or {}))
      (tmp / CONVERSION_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
  return output


def convert(fmt: str, input_path, output, vision=None, llm=None, *, mesh=None,
            param_dtype: str = "auto", connector: Optional[dict] = None, select_layer: int = -2,
            num_queries: Optional[int] = None,
            seed: int = 0, skip_check: bool = False, tolerance: float = 1e-3,
            overwrite: bool = False, tokenizer=None, progress: bool = False) -> dict:
  """The whole conversion (``python -m acformer_jax.convert``); returns a report dict.

  Raises :class:`ConversionError` (bad input, failed self-check) without leaving an
  output directory behind.
  """
  import time  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion import check as check_lib  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion.formats import make_plan  # pylint: disable=import-outside-toplevel
  output = pathlib.Path(output)
  if output.exists() and not overwrite:
    raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
  outputs.check_writable(output.absolute().parent, "--output folder")
  t0 = time.time()
  plan = make_plan(fmt, input_path, vision=vision, llm=llm, connector=connector,
                   select_layer=select_layer, num_queries=num_queries)
  if tokenizer is not None:
    plan.tokenizer_dir = pathlib.Path(tokenizer)
    if params_store.find_tokenizer(tokenizer) != plan.tokenizer_dir:
      raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer.model or tokenizer.json")
  if plan.tokenizer_dir is None:
    log.warning("no tokenizer files found next to the inputs: the checkpoint will have none "
                "(pass --tokenizer DIR; generate/evaluate need one)")
  mesh = mesh if mesh is not None else sharding_lib.make_mesh((1, -1, 1))
  cfg, params = build_params(plan, mesh, param_dtype=param_dtype, seed=seed, progress=progress)
  jax.block_until_ready(params)
  t_load = time.time() - t0
  report = {"seconds_load": round(t_load, 2), "bytes_read_this_process": plan.source.bytes_read,
            "param_dtype": cfg.param_dtype}
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  fits, why = check_lib.reference_fits(cfg, num_params)
  if skip_check or not fits:
    report["self_check"] = "skipped: " + ("--skip_check" if skip_check else why)
    log.warning("self-check %s", report["self_check"])
  else:
    res = check_lib.self_check(plan, cfg, params, mesh, tolerance=tolerance)
    report.update(self_check="passed" if res.passed else "FAILED",
                  max_abs_diff=res.max_abs_diff, check_detail=res.detail)
    log.info("self-check: %s", res.detail)
    if not res.passed:
      raise ConversionError(
          f"self-check failed: PyTorch and the converted model disagree ({res.detail}; "
          f"tolerance {res.tolerance:g} x max(1, max|ref|)); nothing was written")
  write_checkpoint(output, cfg, params, plan, overwrite=overwrite, report=report)
  report["seconds_total"] = round(time.time() - t0, 2)
  return report

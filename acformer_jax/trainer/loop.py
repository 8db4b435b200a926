"""The training loop behind ``python -m acformer_jax.train`` (also callable in-process).

Spec: ``docs/method.md`` 2.1-2.2 (two-stage recipe), ``docs/jax_practices.md`` items 3-6, 10, 13-14.
Order of work: mesh -> the experiment (``trainer/builder.py``: validated config, abstract
sharded state, jitted step, FLOPs) -> restore the newest readable checkpoint (state +
data-iterator position) or build the initial parameters from ``config.init`` -> sharding
check -> loop. MFU counts the real FLOPs of each step (its real tokens, images and
per-sample attention); the padded figures are logged next to it. The loop dispatches step ``k+1``
before reading step ``k``'s metrics (one step of lag keeps the device busy) and reads them
synchronously before every save, so a checkpoint never holds a non-finite state (the step's
``finite`` flag covers the loss, the gradient norm and the updated trainable parameters and
optimizer state). It stops on completion, on preemption (SIGTERM: save now) or on a
non-finite step (no save: the last good checkpoint stays the newest).
"""
from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import numpy as np

from acformer_jax import batch as batch_lib
from acformer_jax import outputs
from acformer_jax import sharding as sharding_lib
from acformer_jax.trainer import builder as builder_lib
from acformer_jax.trainer import checkpoint as ckpt_lib
from acformer_jax.trainer import evaluation
from acformer_jax.trainer import flops as flops_lib
from acformer_jax.trainer import initialize, metrics as metrics_lib, pretrained
from acformer_jax.trainer import state as state_lib
from acformer_jax.trainer.validate import ConfigError, validate  # noqa: F401  (loop.validate)

logger = logging.getLogger("acformer_jax.trainer.loop")


def config_to_dict(config) -> Dict[str, Any]:
  return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config),
                               default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def data_config(config) -> Dict[str, Any]:
  d = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
  d["global_batch_size"] = int(config.train.global_batch_size)
  if config.train.get("epochs") is not None:
    d["num_epochs"] = int(config.train.epochs)
  return d


def make_data_iterator(config, mc):
  from acformer_jax.data.train_data import make_train_iterator  # pylint: disable=import-outside-toplevel
  return make_train_iterator(data_config(config), None, mc, jax.process_index(),
                             jax.process_count(), seed=int(config.train.seed))


def tokenizer_dir(config) -> Optional[pathlib.Path]:
  from acformer_jax.data.tokenizer import DEFAULT_TOKENIZER_DIR  # pylint: disable=import-outside-toplevel
  path = config.data.get("tokenizer_path")
  return pathlib.Path(path) if path else DEFAULT_TOKENIZER_DIR


def total_steps(config, it=None) -> int:
  """``train.steps``, or the steps of ``train.epochs`` passes over ``it``'s data source."""
  if config.train.get("steps") is not None:
    return int(config.train.steps)
  from acformer_jax.data import epochs  # pylint: disable=import-outside-toplevel
  if it is None or not hasattr(it, "num_records"):
    raise ConfigError("train.epochs needs a data iterator that knows its dataset size "
                      "(num_records); set train.steps instead")
  return epochs.steps_for_epochs(int(config.train.epochs), it.num_records,
                                 int(config.train.global_batch_size))


def build(config, mesh=None, steps: Optional[int] = None) -> builder_lib.Experiment:
  """The experiment on ``mesh`` (default: ``config.mesh`` over every device); ``steps``: the
  schedule's length (default ``train.steps``)."""
  if mesh is None:
    try:
      mesh = sharding_lib.mesh_from_config(config)
    except ValueError as e:
      raise ConfigError(f"invalid config:\n  - {e}") from e
  return builder_lib.build_experiment(config, mesh, steps=steps)


def initial_state(config, ex: builder_lib.Experiment) -> state_lib.TrainState:
  """A fresh TrainState from ``config.init`` sources (random where none is given)."""
  init_fn = state_lib.init_params_fn(ex.model, ex.mc)
  unboxed = lambda r: nn.unbox(init_fn(r))  # noqa: E731
  params = initialize.initial_params(config.init, unboxed, ex.abstract_state.params,
                                     ex.state_shardings.params, ex.mc,
                                     jax.random.key(int(config.train.seed)))
  make = state_lib.state_from_params_fn(ex.tx, ex.trainable)
  return jax.jit(make, out_shardings=ex.state_shardings, donate_argnums=0)(params)


def check_same_model(store: ckpt_lib.CheckpointStore, cfg_dict: Dict[str, Any]) -> None:
  """Refuses to resume checkpoints of a different model (they would not restore and would
  otherwise be set aside as unreadable)."""
  latest = store.latest_step()
  saved = store.read_config(latest) if latest is not None else None
  if not saved or saved.get("model") == cfg_dict["model"]:
    return
  diff = sorted(k for k in set(saved["model"]) | set(cfg_dict["model"])
                if saved["model"].get(k) != cfg_dict["model"].get(k))
  raise ConfigError(f"{store.directory} holds checkpoints of a different model (config.model "
                    f"fields {diff} differ from step {latest}); use a new --workdir or the old config")


def real_flop_scalars(perf: Dict[str, float], real_flops, padded_per_step: float,
                      peak: float) -> Dict[str, float]:
  """``perf/*`` with MFU and TFLOP/s from the REAL FLOPs of the steps in the window
  (``perf/mfu_padded`` and ``perf/tflops_per_s_padded`` count every slot)."""
  if not perf or not real_flops:
    return perf
  dt = perf["perf/step_time_s"] * len(real_flops)
  out = dict(perf)
  out["perf/tflops_per_s_padded"] = padded_per_step * len(real_flops) / dt / 1e12
  out["perf/tflops_per_s"] = sum(real_flops) / dt / 1e12
  if peak > 0:
    out["perf/mfu_padded"] = out["perf/tflops_per_s_padded"] * 1e12 / peak
    out["perf/mfu"] = out["perf/tflops_per_s"] * 1e12 / peak
  return out


def _json_safe(d) -> Any:
  return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _host_metrics(m) -> Dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(m).items()}


def run(config, workdir, *, data_iterator=None, mesh=None) -> Dict[str, Any]:
  """Trains for ``config.train.steps`` or ``train.epochs`` (resuming if ``workdir`` has
  checkpoints). A data source that ends first (``data.num_epochs``, skipped samples) ends the
  run there: the last step is saved and the run counts as completed (``data_exhausted``).

  Returns a summary dict (``status``: completed | preempted | nan, ``step``, last metrics,
  ``export_dir``, the last held-out ``eval`` of ``config.eval``: benchmark, step, metrics,
  answer file); also written to ``<workdir>/summary.json`` on process 0.
  """
  workdir = pathlib.Path(workdir).absolute()
  config = pretrained.resolve(config)  # init.from_pretrained: model, tokenizer, template
  outputs.check_writable(workdir, what="workdir")
  mc = validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
  t = config.train
  cfg_dict = config_to_dict(config)
  eval_task = evaluation.prepare(config.get("eval"), workdir, mc.vision.image_size)
  store = ckpt_lib.CheckpointStore(workdir / "checkpoints", save_every=int(config.checkpoint.every),
                                   keep=int(config.checkpoint.keep),
                                   async_save=bool(config.checkpoint.async_save))
  check_same_model(store, cfg_dict)
  it = data_iterator if data_iterator is not None else make_data_iterator(config, mc)
  total = total_steps(config, it)
  ex = build(config, mesh, steps=total)
  mesh = ex.mesh
  restored = store.restore_latest(ex.abstract_state)
  if restored is not None:
    state = restored.state
    it.set_state(ckpt_lib.data_state_for_this_process(restored.data_state))
    logger.info("resumed from %s step %d", store.directory, restored.step)
  else:
    state = initial_state(config, ex)
    logger.info("initialised (%s)", initialize.describe_sources(config.init))
  frac = state_lib.assert_sufficiently_sharded(state.params, ex.state_shardings.params, mesh,
                                               float(t.sharding_tolerance))
  step_fn = ex.step
  padded = ex.padded_flops
  peak, peak_src = flops_lib.peak_flops_total(float(t.peak_flops_per_device))
  writer = metrics_lib.MetricsWriter(workdir)
  start = int(jax.device_get(state.step))
  if start == 0:
    writer.write_text("config", "```\n" + json.dumps(cfg_dict, indent=2) + "\n```")
  logger.info("mesh %s, %d params (%.1f%% bytes replicated over fsdp/tensor), %.3g padded "
              "FLOPs/step (vit %.3g, connector %.3g, llm %.3g; MFU counts real tokens only), "
              "peak %.3g FLOP/s (%s)", dict(mesh.shape), state_lib.param_count(state.params),
              100 * frac, padded.total, padded.vit, padded.connector, padded.llm, peak, peak_src)
  throughput = metrics_lib.Throughput(padded.total, peak)
  real_window, real_total, steps_run = [], 0.0, 0
  watcher = ckpt_lib.PreemptionWatcher()
  bar = None
  if bool(t.progress_bar) and jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=total, initial=start, desc=f"stage {t.stage}", dynamic_ncols=True, mininterval=1.0)

  status, last, losses, last_eval, exhausted = "completed", {}, [], None, False
  last_saved = restored.step if restored is not None else None
  pending = None  # (step, metrics) not yet read

  def handle(step: int, m) -> bool:
    """Reads step metrics; logs; returns False on a non-finite loss/grad norm."""
    nonlocal last, real_total, steps_run
    host = _host_metrics(m)
    last = {"step": step, **host}
    throughput.add(host["tokens"])
    real = ex.real_flops(host).total
    real_window.append(real)
    real_total += real
    steps_run += 1
    losses.append(host["loss"])
    if bool(t.nan_guard) and not host["finite"]:
      logger.error("non-finite step %d (loss %.4g, grad norm %.4g, or the updated parameters / "
                   "optimizer state): halting; the last good checkpoint is step %s in %s", step,
                   host["loss"], host["grad_norm"], last_saved, store.directory)
      return False
    if host["dropped_tokens"] > 0:
      logger.warning("step %d: %d supervised tokens beyond train.loss_positions=%d per row were "
                     "left out of the loss; raise it", step, int(host["dropped_tokens"]),
                     int(t.loss_positions))
    if bar is not None:
      bar.update(1)
    if step % int(t.log_every) == 0 or step == total:
      scalars = {f"train/{k}": v for k, v in host.items() if k not in ("finite",)}
      scalars["train/loss_avg"] = float(np.mean(losses))
      losses.clear()
      scalars.update(real_flop_scalars(throughput.scalars(), real_window, padded.total, peak))
      real_window.clear()
      scalars.update(metrics_lib.data_scalars(it.stats()))
      writer.write_scalars(step, scalars)
      if bar is not None:
        bar.set_postfix(loss=f"{host['loss']:.4f}", lr=f"{host['lr']:.2e}")
      logger.info("step %d loss %.4f lr %.3e grad_norm %.3f %s", step, host["loss"], host["lr"],
                  host["grad_norm"], {k: round(v, 4) for k, v in scalars.items() if k.startswith("perf/")})
    return True

  eval_tokenizer = None  # loaded once, at the first evaluation

  def run_eval(step: int):
    nonlocal eval_tokenizer
    if eval_tokenizer is None:
      from acformer_jax.data.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
      eval_tokenizer = load_tokenizer(tokenizer_dir(config))
    res = evaluation.run(eval_task, model=ex.model, mc=mc, params=nn.unbox(state.params),
                         mesh=mesh, tokenizer=eval_tokenizer, step=step, workdir=workdir)
    writer.write_scalars(step, evaluation.scalars(res))
    return res

  try:
    for step in range(start, total):
      try:
        batch = next(it)
      except StopIteration:
        exhausted = True
        break
      state, m = step_fn(state, batch_lib.to_device(batch, mesh))
      if pending is not None and not handle(*pending):
        status, pending = "nan", None
        break
      new_step = step + 1
      pending = (new_step, m)
      if float(t.debug_step_delay_s) > 0:
        time.sleep(float(t.debug_step_delay_s))
      preempted = watcher.reached(new_step)
      if preempted or new_step == total or store.should_save(new_step):
        ok = handle(*pending)
        pending = None
        if not ok:
          status = "nan"
          break
        if store.save(new_step, state, it.get_state(), cfg_dict, force=True):
          last_saved = new_step
        if preempted:
          status = "preempted"
          logger.warning("preempted: saved step %d, stopping", new_step)
          break
      if eval_task is not None and eval_task.due(new_step, total):
        if pending is not None:
          ok, pending = handle(*pending), None
          if not ok:
            status = "nan"
            break
        last_eval = run_eval(new_step)
    if pending is not None and not handle(*pending):
      status = "nan"
    if exhausted and status == "completed":
      final = int(jax.device_get(state.step))
      logger.warning("the data ended at step %d of %d (data.num_epochs / train.epochs reached, "
                     "or samples skipped); finishing there", final, total)
      if final > start and last_saved != final and store.save(final, state, it.get_state(),
                                                              cfg_dict, force=True):
        last_saved = final
  finally:
    store.wait()
    watcher.close()
    if bar is not None:
      bar.close()
    writer.flush()

  if status == "completed" and eval_task is not None and last_eval is None:
    last_eval = run_eval(int(jax.device_get(state.step)))  # a re-run of a finished job
    writer.flush()
  export_dir = None
  if status == "completed" and bool(config.checkpoint.export):
    export_dir = ckpt_lib.export_for_inference(
        workdir / "export", state.params, mc, tokenizer_dir=tokenizer_dir(config),
        experiment_config=cfg_dict)
  store.close()
  writer.close()
  if hasattr(it, "close"):
    it.close()
  summary = {"status": status, "step": int(last.get("step", start)), "last_metrics": last,
             "last_checkpoint": last_saved, "workdir": str(workdir),
             "export_dir": str(export_dir) if export_dir else None,
             "flops_per_step": real_total / max(steps_run, 1),  # real work, mean over the run
             "padded_flops_per_step": padded.total, "data": _json_safe(it.stats()),
             "eval": last_eval, "total_steps": total, "data_exhausted": exhausted}
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary

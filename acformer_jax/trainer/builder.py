"""The one experiment builder: config + mesh -> model, optimizer, abstract state, jitted step.

``train`` (``trainer/loop.py``), ``aot`` and ``bench`` all call :func:`build_experiment`, each
with its own mesh (the training devices, libtpu's compile-only devices, one CPU device), so
what AOT compiles and the benchmark times is the function that training runs (MaxText's
``train_compile`` reuses the trainer's setup the same way; ``docs/seams.md``).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import optax
from jax.sharding import Mesh

from acformer_jax import batch as batch_lib
from acformer_jax import config as config_lib
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import flops as flops_lib
from acformer_jax.trainer import optim
from acformer_jax.trainer import state as state_lib
from acformer_jax.trainer import step as step_lib
from acformer_jax.trainer.validate import validate


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything but data and loop. ``step`` is the jitted ``(state, batch) -> (state,
  metrics)`` with explicit shardings and the state donated (``step.jitted`` for lowering)."""
  config: Any
  mc: config_lib.ModelConfig
  mesh: Mesh
  model: MultimodalLM
  tx: optax.GradientTransformation
  schedule: Callable
  trainable: Tuple[str, ...]
  state_fn: Callable                 # rng -> boxed TrainState
  abstract_state: state_lib.TrainState
  state_shardings: state_lib.TrainState
  batch_shape: batch_lib.BatchShape  # the GLOBAL batch
  step: Callable
  llm_trainable: bool
  head_positions: int
  padded_flops: flops_lib.StepFlops  # every token and image slot of every row

  def abstract_batch(self) -> Dict[str, jax.ShapeDtypeStruct]:
    return batch_lib.abstract(self.batch_shape, self.mesh)

  def lower(self, abstract_batch: Optional[Mapping[str, Any]] = None):
    """AOT-lowers :attr:`step` on abstract inputs (nothing is allocated)."""
    return step_lib.lower(self.step, self.abstract_state,
                          abstract_batch if abstract_batch is not None else self.abstract_batch())

  def real_flops(self, metrics: Mapping[str, Any]) -> flops_lib.StepFlops:
    """Model FLOPs of the real work of one step, from its metrics (``tokens``, ``images``,
    ``attention_pairs``; the LM head on the kept supervised tokens with
    ``train.loss_positions``, else on every real token)."""
    tokens = float(metrics["tokens"])
    head = tokens
    if self.head_positions:
      head = float(metrics["supervised_tokens"]) - float(metrics["dropped_tokens"])
    return flops_lib.real_step_flops(
        self.mc, tokens=tokens, images=float(metrics["images"]),
        attention_pairs=float(metrics["attention_pairs"]), head_tokens=head,
        llm_trainable=self.llm_trainable)

  def batch_flops(self, host_batch: Mapping[str, Any]) -> flops_lib.StepFlops:
    """:meth:`real_flops` of a whole numpy batch (benchmarks; one process)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    seg = np.asarray(host_batch["segment_ids"])
    counts = np.stack([np.bincount(r, minlength=seg.shape[1] + 1)[1:] for r in seg])
    labels = np.asarray(host_batch["labels"])
    return self.real_flops({
        "tokens": batch_lib.real_tokens(host_batch), "images": batch_lib.real_images(host_batch),
        "attention_pairs": float(np.sum(counts.astype(np.float64) ** 2)),
        "supervised_tokens": int(np.sum(labels[:, 1:] != batch_lib.IGNORE_INDEX)),
        "dropped_tokens": 0})


def llm_trains(abstract_params, trainable) -> bool:
  """Whether any ``llm/`` parameter is in the trainable set (stage 2)."""
  pats = optim.compile_patterns(trainable)
  flat = optim._flat(abstract_params)  # pylint: disable=protected-access
  return any(optim.is_trainable(k, pats) for k in flat if k.startswith("llm/"))


def build_experiment(config, mesh: Mesh, *, process_count: Optional[int] = None,
                     random_init_ok: bool = False, steps: Optional[int] = None) -> Experiment:
  """Validates ``config`` for ``mesh`` and builds the experiment on it.

  Args:
    config: an experiment config (``configs/*.py``).
    mesh: the ``(data, fsdp, tensor)`` mesh to shard over (``sharding.make_mesh``).
    process_count: hosts feeding the batch (default ``jax.process_count()``).
    random_init_ok: accept a config without parameter sources (AOT and benchmarks never
      read parameters).
    steps: the learning-rate schedule's length (default ``train.steps``; the trainer passes
      the steps of ``train.epochs``).

  Raises:
    trainer.validate.ConfigError: listing every problem with the config.
  """
  if random_init_ok and not config.init.allow_random:
    config = copy.deepcopy(config)
    config.init.allow_random = True
  pc = jax.process_count() if process_count is None else int(process_count)
  mc = validate(config, num_devices=mesh.size, process_count=pc)
  t = config.train
  model = MultimodalLM(mc)
  steps = int(steps if steps is not None else (t.get("steps") or 1))
  tx, schedule = optim.make_optimizer(t.optimizer, steps)
  trainable = tuple(t.trainable)
  state_fn = state_lib.make_state_fn(model, mc, tx, trainable)
  abstract, shardings = state_lib.abstract_state(state_fn, mesh)
  head = int(t.get("loss_positions", 0))
  step = step_lib.jit_train_step(
      step_lib.make_train_step(model, tx, schedule, trainable=trainable,
                               grad_accum=int(t.get("grad_accum_steps", 1)), seed=int(t.seed),
                               **step_lib.loss_lib.loss_options(t)),
      mesh, shardings)
  shape = batch_lib.global_shape(config, mc.vision.image_size)
  llm_tr = llm_trains(abstract.params, trainable)
  padded = flops_lib.train_step_flops(mc, shape.rows, shape.length, llm_trainable=llm_tr,
                                      head_positions=head, images_per_row=shape.images_per_row)
  return Experiment(config=config, mc=mc, mesh=mesh, model=model, tx=tx, schedule=schedule,
                    trainable=trainable, state_fn=state_fn, abstract_state=abstract,
                    state_shardings=shardings, batch_shape=shape, step=step,
                    llm_trainable=llm_tr, head_positions=head, padded_flops=padded)


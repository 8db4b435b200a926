"""``acformer_jax.load_pretrained(DIR) -> (model, params)``.

``DIR`` is an acformer_jax checkpoint (``model_config.json`` + Orbax ``params/``: a
converted model or a training export) or a transformers ``LlavaForConditionalGeneration``
directory, converted on the fly (streamed into the mesh's shardings, nothing written).
Spec: ``docs/jax_practices.md`` items 3, 7.
"""
from __future__ import annotations

import pathlib
from typing import Any, Optional, Tuple

from acformer_jax.models.mllm import MultimodalLM


def load_pretrained(directory, *, mesh=None, dtype: Optional[str] = None
                    ) -> Tuple[MultimodalLM, Any]:
  """Returns ``(MultimodalLM, params)``; params sharded on ``mesh`` when given.

  Args:
    directory: checkpoint or hf-llava directory.
    mesh: optional ``(data, fsdp, tensor)`` mesh (default: one device for checkpoints,
      all local devices over ``fsdp`` for on-the-fly conversion).
    dtype: optional compute dtype override (e.g. ``"bfloat16"``).
  """
  import dataclasses  # pylint: disable=import-outside-toplevel
  from acformer_jax import params_store  # pylint: disable=import-outside-toplevel
  d = pathlib.Path(directory)
  if not d.is_dir():
    raise FileNotFoundError(f"{d} does not exist")
  if (d / params_store.CONFIG_FILE).is_file():
    cfg, params = params_store.restore_all(d, mesh=mesh, dtype=dtype)
    return MultimodalLM(cfg), params
  if params_store.is_hf_llava(d):
    from acformer_jax import sharding  # pylint: disable=import-outside-toplevel
    from acformer_jax.conversion import formats, pipeline  # pylint: disable=import-outside-toplevel
    plan = formats.make_plan("hf-llava", d)
    cfg, params = pipeline.build_params(
        plan, mesh if mesh is not None else sharding.make_mesh((1, -1, 1)))
    if dtype is not None:
      cfg = dataclasses.replace(cfg, dtype=dtype)
    return MultimodalLM(cfg), params
  raise FileNotFoundError(
      f"{d}: neither an acformer_jax checkpoint (model_config.json + params/) nor a "
      "transformers Llava directory (config.json with model_type 'llava'); convert other "
      "formats with `python -m acformer_jax.convert` first")

"""Self-check after a conversion: the same fixed input through PyTorch and through JAX.

Spec: ``docs/jax_practices.md`` item 8 and section 9.2 (silent mismatches after
conversion: compare logits automatically). The PyTorch side is built from the
*source* tensors under their own names (transformers classes, or
``torch_acformer`` for the official connector), never through our key maps, so a
wrong transpose, head order or RoPE layout shows up as a large max |Δlogit|.

References by plan kind: ``hf-llava``: ``LlavaForConditionalGeneration``;
``composed`` (llava, acformer, llava-stage1): ``CLIPVisionModel`` -> the source
projector -> ``LlamaForCausalLM`` on spliced embeddings; ``towers`` (hf-clip,
hf-llama with a fresh connector): CLIP features and text-only logits separately.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Tuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from acformer_jax import config as config_lib
from acformer_jax.conversion import hf_llava
from acformer_jax.conversion import plan as plan_lib
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.models.towers import tower

log = logging.getLogger("acformer_jax.convert")


@dataclasses.dataclass
class CheckResult:
  max_abs_diff: float
  max_abs_ref: float
  tolerance: float
  passed: bool
  detail: str


def fixed_inputs(cfg: config_lib.ModelConfig, batch: int = 2, text: int = 6, seed: int = 0,
                 with_image: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """Seeded images ``[B,S,S,3]`` and ids ``[B, Nv+text]``; row b's image starts at 1+b."""
  rng = np.random.default_rng(seed)
  s, nv = cfg.vision.image_size, config_lib.num_visual_tokens(cfg)
  images = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
  vocab = cfg.llm.vocab_size
  ids = rng.integers(3, vocab, size=(batch, nv + text)).astype(np.int32)
  ids[ids == cfg.image_token_id] = 3
  ids[:, 0] = cfg.llm.bos_token_id
  if with_image:
    for b in range(batch):
      start = 1 + b % max(text - 1, 1)
      ids[b, start:start + nv] = cfg.image_token_id
  return images, ids


def _replicated(mesh, x: np.ndarray) -> jax.Array:
  sh = NamedSharding(mesh, PartitionSpec())
  return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def jax_outputs(cfg, params, mesh, images, ids, vision_only: bool = False) -> np.ndarray:
  """float32 logits (or ViT features with ``vision_only``) on every process."""
  model = MultimodalLM(dataclasses.replace(cfg, dtype="float32"))
  rep = NamedSharding(mesh, PartitionSpec())
  if vision_only:
    fn = lambda p, x, i: model.apply({"params": p}, x, method=lambda m, im: m.vision(im)[0])
  else:
    fn = lambda p, x, i: model.apply({"params": p}, x, i)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(fn, out_shardings=rep)(params, _replicated(mesh, images), _replicated(mesh, ids))
  return np.asarray(out.addressable_data(0), np.float32)


# --- PyTorch side (process 0 only) -----------------------------------------------------
def _state(source, prefix: str, skip=()) -> Dict[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel
  out = {}
  mounts = ("vision:", "llm:")
  for k in source.keys(raw=True):
    if k.startswith(mounts) and not prefix.startswith(mounts):
      continue  # another mounted checkpoint
    if k.startswith(prefix) and not any(k.startswith(s) for s in skip):
      out[k[len(prefix):]] = torch.from_numpy(np.asarray(source.read(k), np.float32))
  return out


def _load(module, state, what: str, allow_missing=()):
  missing, unexpected = module.load_state_dict(state, strict=False)
  missing = [k for k in missing if not any(a in k for a in allow_missing)]
  if missing or unexpected:
    raise ValueError(f"self-check: {what} reference: missing {missing[:10]}, "
                     f"unexpected {unexpected[:10]}")
  return module.float().eval()


def _torch_clip(plan, cfg):
  """The transformers model of the vision tower (any registered tower)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  d = dict(hf_llava.clip_config_dict(cfg.vision))
  vc = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
  vc._attn_implementation = "eager"  # pylint: disable=protected-access
  state = _state(plan.source, plan.reference["vision_prefix"])
  if cfg.vision.tower == "clip":
    return _load(transformers.AutoModel.from_config(vc), state, cfg.vision.tower,
                 allow_missing=("position_ids",))
  # Other towers' torch modules rename keys on load (e.g. DINOv2's attention.attention.query
  # -> q_proj in transformers 5): load them the way transformers reads a saved directory.
  import tempfile  # pylint: disable=import-outside-toplevel
  import safetensors.torch  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    vc.save_pretrained(tmp)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                f"{tmp}/model.safetensors", metadata={"format": "pt"})
    return transformers.AutoModel.from_pretrained(tmp, dtype=torch.float32,
                                                  attn_implementation="eager").eval()


def _torch_llama(plan, cfg):
  """The transformers causal LM of ``cfg.llm.family`` (built from the family's HF config)."""
  import transformers  # pylint: disable=import-outside-toplevel
  d = hf_llava.text_config_dict(cfg.llm)
  lc = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
  lc._attn_implementation = "eager"  # pylint: disable=protected-access
  p = plan.reference["llm_prefix"]
  state = _state(plan.source, p, skip=(p + "model.mm_projector.", p + "model.vision_tower."))
  state = {k: v for k, v in state.items() if "rotary_emb" not in k}
  allow = ("lm_head",) if cfg.llm.tie_word_embeddings else ()
  return _load(transformers.AutoModelForCausalLM.from_config(lc), state, cfg.llm.family,
               allow_missing=allow)


def _vision_features(clip, images, cfg, attentions: bool):
  import torch  # pylint: disable=import-outside-toplevel
  out = clip(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
             output_hidden_states=True, output_attentions=attentions)
  layer = cfg.vision.select_layer
  feats = tower(cfg.vision.tower).hf_features(cfg.vision, out.hidden_states[layer])
  attn = out.attentions[layer - 1 if layer > 0 else layer][:, :, 0, 1:] if attentions else None
  return feats, attn


def _torch_connector(plan, cfg, feats, attn):
  import torch  # pylint: disable=import-outside-toplevel
  from acformer_jax.conversion import torch_acformer  # pylint: disable=import-outside-toplevel
  c, p = cfg.connector, plan.reference["connector_prefix"]
  state = _state(plan.source, p)
  if c.type == "acformer":
    proj = torch_acformer.build_projector(cfg.vision.hidden_size, cfg.llm.hidden_size, c.depth,
                                          c.heads, c.dim_head, c.ff_mult)
    proj = _load(proj, state, "AcFormer projector", allow_missing=("latents",))
    return torch_acformer.connector_forward(proj, feats, attn, c.num_queries)
  x = feats[:, 1:]
  if c.type == "linear":
    return x @ state["weight"].T + state["bias"]
  h = torch.nn.functional.gelu(x @ state["0.weight"].T + state["0.bias"])
  return h @ state["2.weight"].T + state["2.bias"]


def _splice_logits(llm, ids, visual, image_id, attention_mask=None):
  import torch  # pylint: disable=import-outside-toplevel
  ids_t = torch.from_numpy(ids.astype(np.int64))
  is_image = ids_t == image_id
  embeds = llm.get_input_embeddings()(torch.where(is_image, 0, ids_t)).clone()
  for b in range(ids.shape[0]):
    pos = torch.nonzero(is_image[b]).flatten()
    if len(pos):
      embeds[b, pos] = visual[b, :len(pos)]
  return llm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids_t)).logits


def torch_outputs(plan, cfg, images, ids, vision_only: bool = False) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  kind = plan.reference["kind"]
  with torch.no_grad():
    if kind == "hf-llava":
      import transformers  # pylint: disable=import-outside-toplevel
      model = transformers.LlavaForConditionalGeneration.from_pretrained(
          plan.reference["dir"], dtype=torch.float32, attn_implementation="eager").eval()
      out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                  pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
                  attention_mask=torch.ones(ids.shape, dtype=torch.int64)).logits
    elif vision_only:
      out, _ = _vision_features(_torch_clip(plan, cfg), images, cfg, attentions=False)
    elif kind == "towers":
      llm = _torch_llama(plan, cfg)
      out = llm(input_ids=torch.from_numpy(ids.astype(np.int64))).logits
    else:
      feats, attn = _vision_features(_torch_clip(plan, cfg), images, cfg,
                                     attentions=cfg.connector.type == "acformer")
      visual = _torch_connector(plan, cfg, feats, attn)
      out = _splice_logits(_torch_llama(plan, cfg), ids, visual, cfg.image_token_id)
  return out.float().numpy()


def reference_fits(cfg: config_lib.ModelConfig, num_params: int) -> Tuple[bool, str]:
  """Whether a float32 PyTorch copy of the model fits in half the available RAM."""
  need = 4 * num_params
  try:
    with open("/proc/meminfo") as f:
      avail = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
  except (OSError, StopIteration):
    return True, ""
  if need > avail // 2:
    return False, (f"the float32 PyTorch reference needs ~{need / 2**30:.1f} GiB and only "
                   f"{avail / 2**30:.1f} GiB are available")
  return True, ""


def self_check(plan: plan_lib.Plan, cfg, params, mesh, tolerance: float = 1e-3) -> CheckResult:
  """Runs both sides and compares; collective over processes (torch on process 0).

  Passes when ``max|Δ| <= tolerance * max(1, max|reference|)``.
  """
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  towers = plan.reference["kind"] == "towers"
  passes = [("vision features", True, True), ("text logits", False, False)] if towers else \
      [("logits", False, True)]
  worst, ref_max, details = 0.0, 0.0, []
  for name, vision_only, with_image in passes:
    images, ids = fixed_inputs(cfg, with_image=with_image)
    ours = jax_outputs(cfg, params, mesh, images, ids, vision_only=vision_only)
    diff = scale = 0.0
    error = None
    if jax.process_index() == 0:
      try:  # never leave the other processes waiting in the broadcast below
        ref = torch_outputs(plan, cfg, images, ids, vision_only=vision_only)
        if ref.shape != ours.shape:
          raise ValueError(f"{name} shapes differ: torch {ref.shape}, ours {ours.shape}")
        diff, scale = float(np.max(np.abs(ref - ours))), float(np.max(np.abs(ref)))
      except Exception as e:  # pylint: disable=broad-except
        error, diff = f"{type(e).__name__}: {e}", float("nan")
    diff, scale = (float(v) for v in multihost_utils.broadcast_one_to_all(
        np.asarray([diff, scale], np.float64)))
    if np.isnan(diff):
      raise ValueError(f"self-check ({name}): the PyTorch reference failed or an output is "
                       f"not finite ({error or 'non-finite values; see process 0'})")
    details.append(f"{name}: max|Δ| = {diff:.3g} (max|ref| = {scale:.3g})")
    if diff / max(1.0, scale) >= worst / max(1.0, ref_max):
      worst, ref_max = diff, scale
  passed = bool(worst <= tolerance * max(1.0, ref_max))
  return CheckResult(worst, ref_max, tolerance, passed, "; ".join(details))

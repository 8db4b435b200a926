"""The one-file claim of the LLM family registry (issue #16): a family registered from
inside this test file, with no edit anywhere else, trains (a few sharded train steps),
counts FLOPs, converts from its transformers checkpoint with ``convert --format
hf-<family>`` and maps back (its key map's export direction), and generates greedily the tokens transformers does.

The toy family is Phi-3's layout (fused ``qkv_proj`` and ``gate_up_proj``, HF
``model_type: phi3``) on the shared decoder: only its config map and key map are new
(the fused matrices become row-block views of the checkpoint, see ``plan.split_key``).
"""
import functools

import flax.linen as nn
import jax
import numpy as np
import torch
import transformers

import tiny_hf
from acformer_jax import config as C
from acformer_jax import load_pretrained
from acformer_jax.conversion import pipeline
from acformer_jax.conversion.plan import SPLIT_RE, split_key
from acformer_jax.inference import engine as E
from acformer_jax.keymap import LINEAR, KeyMap, LayerStack, Rule, flatten_paths
from acformer_jax.models import registry
from acformer_jax.models.families import decoder_hf
from acformer_jax.models.llama import LlamaModel
from acformer_jax.models.mllm import MultimodalLM
from acformer_jax.trainer import flops, state as S
from tests.conversion import tiny_checkpoints as TC
from tests.trainer import tiny

NAME = "toy_phi3"


# ---- the whole family: config map, key map, registration --------------------------------
def _from_hf(d):
  heads = int(d["num_attention_heads"])
  if int(d.get("num_key_value_heads") or heads) != heads:
    raise ValueError("toy_phi3: the fused qkv_proj is split into 3 equal blocks (MHA only)")
  if float((d.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError("toy_phi3: partial_rotary_factor != 1 is not supported")
  return decoder_hf.config_from_hf(d, NAME, model_type="phi3")


def _to_hf(lc):
  return decoder_hf.config_to_hf(lc, model_type="phi3", architecture="Phi3ForCausalLM")


def _keymap(lc):
  rules = [Rule("model.embed_tokens.weight", "embed_tokens/embedding"),
           Rule("model.norm.weight", "norm/scale")]
  if not lc.tie_word_embeddings:
    rules.append(Rule("lm_head.weight", "lm_head/kernel", LINEAR))
  qkv, gate_up = "model.layers.{i}.self_attn.qkv_proj.weight", "model.layers.{i}.mlp.gate_up_proj.weight"
  layer = [Rule("model.layers.{i}.input_layernorm.weight", "input_layernorm/scale"),
           Rule("model.layers.{i}.post_attention_layernorm.weight", "post_attention_layernorm/scale"),
           Rule("model.layers.{i}.self_attn.o_proj.weight", "self_attn/o_proj/kernel", LINEAR),
           Rule("model.layers.{i}.mlp.down_proj.weight", "mlp/down_proj/kernel", LINEAR)]
  layer += [Rule(split_key(qkv, j, 3), f"self_attn/{p}/kernel", LINEAR)
            for j, p in enumerate(("q_proj", "k_proj", "v_proj"))]
  layer += [Rule(split_key(gate_up, j, 2), f"mlp/{p}/kernel", LINEAR)
            for j, p in enumerate(("gate_proj", "up_proj"))]
  ignore = ((r"lm_head\.weight",) if lc.tie_word_embeddings else ())
  return KeyMap.build(rules, layer, [LayerStack("layers", 0, lc.num_layers)], ignore)


FAMILY = registry.register_family(registry.Family(
    name=NAME, hf_model_type="phi3", hf_architecture="Phi3ForCausalLM", from_hf=_from_hf,
    to_hf=_to_hf, keymap=_keymap, flops=decoder_hf.flops, decoder=LlamaModel,
    template="chatml", stop_tokens=("<|end|>",)), replace=True)
# -----------------------------------------------------------------------------------------

TOL = 2e-4
TOY_MODEL = C.ModelConfig(vision=tiny.VISION, connector=tiny.CONN, image_token_id=64,
                          llm=C.LLMConfig(**{**tiny.LLM.__dict__, "family": NAME}))


def test_trains_with_the_registered_family():
  model = MultimodalLM(TOY_MODEL)
  init = S.init_params_fn(model, TOY_MODEL)
  host = jax.device_get(jax.jit(lambda r: nn.unbox(init(r)))(jax.random.key(0)))
  losses = tiny.sharded_train_losses(model, TOY_MODEL, host, tiny.batch(1, config=TOY_MODEL))
  assert losses[-1] < losses[0]
  want = decoder_hf.flops(TOY_MODEL.llm, 20)
  assert flops.llm_forward_flops(TOY_MODEL.llm, 20) == want  # flops.py asked the registry


@functools.lru_cache(maxsize=None)
def _hf_phi3(directory):
  cfg = transformers.Phi3Config(vocab_size=96, hidden_size=32, intermediate_size=48,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=128, rms_norm_eps=1e-5, pad_token_id=0,
                                bos_token_id=1, eos_token_id=2)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = tiny_hf.randomize_(transformers.Phi3ForCausalLM(cfg), 0, std=0.15)
  model.save_pretrained(directory)
  return model


def test_converts_exports_and_generates(tmp_path):
  hf = _hf_phi3(tmp_path / "phi3")
  TC.clip(tmp_path / "clip")
  report = pipeline.convert(f"hf-{NAME}", tmp_path / "phi3", tmp_path / "ckpt",
                            vision=tmp_path / "clip", connector={"type": "linear"}, tolerance=TOL)
  assert report["self_check"] == "passed" and report["max_abs_diff"] <= TOL, report
  model, params = load_pretrained(tmp_path / "ckpt")
  assert model.config.llm.family == NAME
  prompt = np.random.default_rng(5).integers(3, 90, 9).tolist()
  res = E.Engine(model, params, bucket_multiple=16).generate(
      [E.Request(prompt)], max_new_tokens=6, eos_token_id=2, return_scores=True)[0]
  x = torch.tensor([prompt])
  with torch.no_grad():
    want = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6,
                       do_sample=False, eos_token_id=2, pad_token_id=0)[0, len(prompt):].tolist()
    ref = hf(input_ids=torch.tensor([prompt + res.tokens])).logits.numpy()[0]
  want = want[:want.index(2)] if 2 in want else want
  assert res.tokens == want
  np.testing.assert_allclose(res.scores[:len(res.tokens)],
                             ref[len(prompt) - 1:len(prompt) - 1 + len(res.tokens)], atol=TOL, rtol=0)
  # The key map's export direction gives the fused HF tensors back, bit for bit.
  parts = {}
  for key, arr in _keymap(model.config.llm).export(flatten_paths(jax.device_get(params["llm"]))):
    m = SPLIT_RE.match(key)
    real, j = (m.group(1), int(m.group(2))) if m else (key, 0)
    parts.setdefault(real, {})[j] = arr
  exported = {k: np.concatenate([v[j] for j in sorted(v)]) for k, v in parts.items()}
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert sorted(exported) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(exported[k], v)

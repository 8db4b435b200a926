"""Gemma (1): RMSNorm scaling by ``1 + w``, embeddings times ``sqrt(d)``, GeGLU with the
tanh GELU, head_dim 256, MQA in the 2B size, a tied head, ``<start_of_turn>`` template."""
from acformer_jax.models import registry
from acformer_jax.models.families import decoder_hf
from acformer_jax.models.llama import LlamaModel

NAME = "gemma"
_ACTS = ("gelu_pytorch_tanh", "gelu")  # HF reads a legacy "gelu" as the tanh approximation


def from_hf(d):
  d = dict(d)
  if d.get("hidden_activation"):
    d["hidden_act"] = d["hidden_activation"]
  if d.get("attention_bias"):
    raise ValueError("gemma config: attention_bias=true is not supported")
  return decoder_hf.config_from_hf(
      d, NAME, model_type="gemma", acts=_ACTS, tie_default=True, head_dim_default=256,
      bos=2, eos=1, pad=0, norm_unit_offset=True, scale_embeddings=True,
      mlp_activation="gelu_tanh")


def to_hf(lc):
  return decoder_hf.config_to_hf(lc, model_type="gemma", architecture="GemmaForCausalLM",
                                 hidden_act="gelu_pytorch_tanh", attention_bias=False)


FAMILY = registry.register_family(registry.Family(
    name=NAME, hf_model_type="gemma", hf_architecture="GemmaForCausalLM",
    from_hf=from_hf, to_hf=to_hf, keymap=decoder_hf.keymap, flops=decoder_hf.flops,
    decoder=LlamaModel, template="gemma", stop_tokens=("<end_of_turn>",)))

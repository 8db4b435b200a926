"""LLaMA-1/2 and Vicuna (spec ``docs/method.md`` 3.1): the shared decoder as it is, SwiGLU,
no biases, ``vicuna_v1`` template."""
from acformer_jax.models import registry
from acformer_jax.models.families import decoder_hf
from acformer_jax.models.llama import LlamaModel

NAME = "llama"


def from_hf(d, family=NAME):
  for flag in ("attention_bias", "mlp_bias"):
    if d.get(flag):
      raise ValueError(f"{family} config: {flag}=true is not supported (LLaMA has no biases; "
                       "its attention_bias also covers o_proj)")
  return decoder_hf.config_from_hf(d, family, model_type="llama")


def to_hf(lc):
  return decoder_hf.config_to_hf(lc, model_type="llama", architecture="LlamaForCausalLM",
                                 attention_bias=False, mlp_bias=False)


FAMILY = registry.register_family(registry.Family(
    name=NAME, hf_model_type="llama", hf_architecture="LlamaForCausalLM",
    from_hf=from_hf, to_hf=to_hf, keymap=decoder_hf.keymap, flops=decoder_hf.flops,
    decoder=LlamaModel, template="vicuna_v1", stop_tokens=("</s>",)))

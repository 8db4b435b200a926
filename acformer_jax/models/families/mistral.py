"""Mistral: the LLaMA decoder with sliding-window attention (key ``j`` visible to query
``q`` iff ``q - window < j <= q``, honoured when the sequence exceeds the window) and
the ``[INST]`` template."""
from acformer_jax.models import registry
from acformer_jax.models.families import decoder_hf
from acformer_jax.models.llama import LlamaModel

NAME = "mistral"


def from_hf(d):
  window = d.get("sliding_window", 4096)  # transformers' MistralConfig default
  return decoder_hf.config_from_hf(d, NAME, model_type="mistral",
                                   sliding_window=None if window is None else int(window))


def to_hf(lc):
  return decoder_hf.config_to_hf(lc, model_type="mistral", architecture="MistralForCausalLM",
                                 sliding_window=lc.sliding_window)


FAMILY = registry.register_family(registry.Family(
    name=NAME, hf_model_type="mistral", hf_architecture="MistralForCausalLM",
    from_hf=from_hf, to_hf=to_hf, keymap=decoder_hf.keymap, flops=decoder_hf.flops,
    decoder=LlamaModel, template="mistral_instruct", stop_tokens=("</s>",)))

"""Llama-3.x: the LLaMA decoder with the 128k vocabulary (BOS ``<|begin_of_text|>``),
``llama3`` rope scaling, a tied head in the 1B/3B sizes and the Llama-3 chat template.

HF configs say ``model_type: llama`` for both LLaMA-2 and Llama-3; a config with a
vocabulary of at least 128000 rows or ``llama3`` rope scaling is taken as Llama-3 (name
the family, e.g. ``--format hf-llama``, to override).
"""
from acformer_jax.config import LLMConfig
from acformer_jax.models import registry
from acformer_jax.models.families import decoder_hf, llama
from acformer_jax.models.llama import LlamaModel

NAME = "llama3"
MIN_VOCAB = 128000


def from_hf(d):
  return llama.from_hf(d, family=NAME)


FAMILY = registry.register_family(registry.Family(
    name=NAME, hf_model_type="llama", hf_architecture="LlamaForCausalLM",
    from_hf=from_hf, to_hf=llama.to_hf, keymap=decoder_hf.keymap, flops=decoder_hf.flops,
    decoder=LlamaModel, template="llama3", stop_tokens=("<|eot_id|>",),
    matches=lambda d: (int(d.get("vocab_size") or 0) >= MIN_VOCAB
                       or dict(decoder_hf.rope_from_hf(d)[1] or ()).get("rope_type") == "llama3")))

# Meta-Llama-3-8B(-Instruct) config.json; the Instruct model ends turns with <|eot_id|>.
PRESETS = {
    "8b": LLMConfig(family=NAME, vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_layers=32, num_heads=32, num_kv_heads=8, rms_norm_eps=1e-5,
                    rope_theta=500000.0, max_position_embeddings=8192, bos_token_id=128000,
                    eos_token_id=128009, pad_token_id=128009),
}

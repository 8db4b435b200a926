"""Qwen2 / Qwen2.5: the shared decoder with q/k/v biases (o_proj has none), rope theta
1e6 in the released sizes, tied embeddings in the small ones, ChatML template.

Qwen2's optional per-layer sliding window (``use_sliding_window``) is off in every
released checkpoint and is refused here.
"""
from acformer_jax.config import LLMConfig
from acformer_jax.models import registry
from acformer_jax.models.families import decoder_hf
from acformer_jax.models.llama import LlamaModel

NAME = "qwen2"


def from_hf(d):
  if d.get("use_sliding_window"):
    raise ValueError("qwen2 config: use_sliding_window=true is not supported (per-layer "
                     "windows from max_window_layers); released Qwen2 checkpoints leave it off")
  return decoder_hf.config_from_hf(d, NAME, model_type="qwen2", attention_bias=True)


def to_hf(lc):
  return decoder_hf.config_to_hf(lc, model_type="qwen2", architecture="Qwen2ForCausalLM",
                                 use_sliding_window=False, sliding_window=None)


FAMILY = registry.register_family(registry.Family(
    name=NAME, hf_model_type="qwen2", hf_architecture="Qwen2ForCausalLM",
    from_hf=from_hf, to_hf=to_hf, keymap=decoder_hf.keymap, flops=decoder_hf.flops,
    decoder=LlamaModel, template="chatml", stop_tokens=("<|im_end|>",)))

# Qwen2-7B(-Instruct) config.json (untied head; the 0.5B/1.5B sizes tie it).
PRESETS = {
    "7b": LLMConfig(family=NAME, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                    num_layers=28, num_heads=28, num_kv_heads=4, rms_norm_eps=1e-6,
                    rope_theta=1000000.0, max_position_embeddings=32768, attention_bias=True,
                    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643),
}

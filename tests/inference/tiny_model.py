"""A tiny random MultimodalLM (Anchor Former connector, GQA decoder) for the inference tests."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from acformer_jax import config as C
from acformer_jax.models.mllm import MultimodalLM

VISION = C.VisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                        num_layers=2, num_heads=4)             # 4x4 = 16 patches
LLM = C.LLMConfig(vocab_size=150, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, eos_token_id=2, bos_token_id=1, pad_token_id=0)
CONN = C.ConnectorConfig(type="acformer", num_queries=8, depth=1, heads=2, dim_head=8, ff_mult=2)
CONFIG = C.ModelConfig(vision=VISION, llm=LLM, connector=CONN, image_token_id=150)
NV = C.num_visual_tokens(CONFIG)  # 1 + 4 * 2 = 9


def init_params(config=CONFIG, seed=0, scale=5.0):
  """Unboxed random params; kernels scaled up so greedy choices are not near-ties."""
  model = MultimodalLM(config)
  s = config.vision.image_size
  boxed = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)),
                              jnp.ones((1, 4), jnp.int32))
  params = jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, nn.unbox(boxed)["params"])
  return model, params


def prompt(length, image_at=None, seed=0):
  """Random text ids in [3, 150) starting with BOS; ``NV`` image ids inserted at ``image_at``."""
  ids = [1] + list(np.random.RandomState(seed).randint(3, 150, size=length - 1))
  if image_at is not None:
    ids = ids[:image_at] + [CONFIG.image_token_id] * NV + ids[image_at:]
  return [int(t) for t in ids]


def image(seed):
  s = VISION.image_size
  return np.random.RandomState(100 + seed).normal(size=(s, s, 3)).astype(np.float32)


CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A cat sitting on a red mat.",
    "Answer the question using a single word or phrase. Is there a dog? No.",
    "yes no red blue green one two three four five six seven eight nine ten",
]


def make_tokenizer(directory, vocab_size=150):
  """Trains a tiny LLaMA-style SentencePiece BPE model (unk 0, bos 1, eos 2) offline and
  writes it with a LlamaTokenizer ``tokenizer_config.json`` into ``directory``."""
  import io  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=vocab_size,
      model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
      add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
      minloglevel=2)
  d = pathlib.Path(directory)
  d.mkdir(parents=True, exist_ok=True)
  (d / "tokenizer.model").write_bytes(buf.getvalue())
  (d / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
      "unk_token": "<unk>", "add_bos_token": True, "legacy": True}))
  return d


CKPT_CONFIG = CONFIG  # the model of the checkpoint tests (vocab = the tiny tokenizer's)

"""Shared fixtures for the data tests: tokenizers and small datasets built offline."""
import io
import json
import pathlib

import pytest

from acformer_jax.data import offline_tokenizer
from acformer_jax.data.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A red circle at the top left.",
    "How many squares are there? 2 squares and 3 circles, 10 shapes in all.",
    "Describe the image briefly. Is there a blue triangle in the image? yes no",
    "Answer the question using a single word or phrase. caf\u00e9 na\u00efve \u00fcber",
] * 20


def llama_asset_dir():
  """The offline LLaMA tokenizer dir, or None when it was not built."""
  return DEFAULT_TOKENIZER_DIR if offline_tokenizer.is_complete(DEFAULT_TOKENIZER_DIR) else None


@pytest.fixture(scope="session")
def llama_tokenizer():
  if llama_asset_dir() is None:
    pytest.skip(f"offline LLaMA tokenizer asset missing at {DEFAULT_TOKENIZER_DIR}: it could not be built "
                "(run `python -m acformer_jax.data.offline_tokenizer` or launch/setup.sh; needs npm or pip)")
  return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
  """A real SentencePiece BPE model trained here with LLaMA's settings (ids 0/1/2, byte fallback)."""
  import sentencepiece as spm
  out = tmp_path_factory.mktemp("tiny_tok")
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_CORPUS), model_writer=buf, vocab_size=400, model_type="bpe",
      byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True,
      allow_whitespace_only_pieces=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2)
  (out / "tokenizer.model").write_bytes(buf.getvalue())
  (out / "tokenizer_config.json").write_text(json.dumps(offline_tokenizer.TOKENIZER_CONFIG))
  return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
  return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_tokenizer_dir) -> pathlib.Path:
  """The real LLaMA tokenizer when built, else the tiny trained one (pipeline tests)."""
  return llama_asset_dir() or tiny_tokenizer_dir


def _save(img, path, fmt):
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path, format=fmt)


@pytest.fixture(scope="session")
def llava_instruct_folder(tmp_path_factory):
  """A tiny ``llava_v1_5_mix665k.json``-style folder with good and every kind of bad sample.

  Returns ``(root, entries, expected_skips)``; entries with ``"good": True`` must come through.
  """
  import skimage.data
  from PIL import Image
  root = tmp_path_factory.mktemp("llava_data")
  cat = Image.fromarray(skimage.data.chelsea())
  _save(cat, root / "coco/train2017/000000000001.jpg", "JPEG")
  _save(Image.fromarray(skimage.data.coffee()), root / "gqa/images/2.png", "PNG")
  _save(Image.fromarray(skimage.data.camera()), root / "vg/VG_100K/3.jpg", "JPEG")
  (root / "ocr_vqa/images").mkdir(parents=True)
  (root / "ocr_vqa/images/bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
  full = (root / "coco/train2017/000000000001.jpg").read_bytes()
  (root / "textvqa/train_images").mkdir(parents=True)
  (root / "textvqa/train_images/cut.jpg").write_bytes(full[:len(full) // 3])
  words = " ".join(["word"] * 300)
  h = lambda v: {"from": "human", "value": v}  # noqa: E731
  g = lambda v: {"from": "gpt", "value": v}  # noqa: E731
  entries = [
      {"id": "good_multiturn", "image": "coco/train2017/000000000001.jpg", "good": True,
       "conversations": [h("<image>\nWhat animal is this?"), g("A cat."), h("What colour?"), g("Brown and grey.")]},
      {"id": "good_image_last", "image": "gqa/images/2.png", "good": True,
       "conversations": [h("What is in the cup?\n<image>"), g("Coffee")]},
      {"id": "good_text_only", "good": True,
       "conversations": [h("Say hi."), g("Hi!"), h("Again."), g("Hi again!")]},
      {"id": "good_leading_gpt", "image": "vg/VG_100K/3.jpg", "good": True,
       "conversations": [g("ignored"), h("<image>\nWho is this?"), g("A photographer.")]},
      {"id": "good_truncated", "image": "vg/VG_100K/3.jpg", "good": True, "truncated": True,
       "conversations": [h("<image>\nDescribe."), g(words)]},
      {"id": "bad_missing_file", "image": "coco/train2017/404.jpg",
       "conversations": [h("<image>\nq"), g("a")]},
      {"id": "bad_corrupt", "image": "ocr_vqa/images/bad.jpg", "conversations": [h("<image>\nq"), g("a")]},
      {"id": "bad_truncated_jpeg", "image": "textvqa/train_images/cut.jpg",
       "conversations": [h("<image>\nq"), g("a")]},
      {"id": "bad_no_image_token", "image": "gqa/images/2.png", "conversations": [h("q"), g("a")]},
      {"id": "bad_roles", "image": "gqa/images/2.png", "conversations": [h("<image>\nq"), h("q2")]},
      {"id": "bad_empty_answer", "image": "gqa/images/2.png", "conversations": [h("<image>\nq"), g(" ")]},
      {"id": "bad_too_long", "image": "gqa/images/2.png", "conversations": [h("<image>\n" + words), g("a")]},
      {"id": "bad_text_with_image_token", "conversations": [h("<image>\nq"), g("a")]},
      {"id": "bad_record_no_conversations", "image": "gqa/images/2.png"},
  ]
  stored = [{k: v for k, v in e.items() if k not in ("good", "truncated")} for e in entries]
  (root / "llava_v1_5_mix665k.json").write_text(json.dumps(stored))
  skips = {"missing_image": 1, "corrupt_image": 2, "missing_image_token": 1, "bad_roles": 1,
           "empty_answer": 1, "no_supervised_tokens": 1, "unexpected_image_token": 1}
  return root, entries, skips


@pytest.fixture(scope="session")
def llava_pretrain_folder(tmp_path_factory):
  """A ``LLaVA-Pretrain``-style folder: blip_laion_cc_sbu_558k.json + images/."""
  import skimage.data
  from PIL import Image
  root = tmp_path_factory.mktemp("llava_pretrain")
  entries = []
  for i, name in enumerate(("astronaut", "coffee", "rocket")):
    rel = f"0000{i}/{i:09d}.jpg"
    _save(Image.fromarray(getattr(skimage.data, name)()), root / "images" / rel, "JPEG")
    entries.append({"id": f"{i:09d}", "image": rel, "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": f"a photo of the {name}"}]})
  (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries))
  return root, entries

"""The offline LLaMA tokenizer (docs/offline_assets.md 1) and the LLaVA-exact encoder."""
import hashlib
import shutil

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from acformer_jax.data import offline_tokenizer as ot
from acformer_jax.data.tokenizer import load_tokenizer, make_encoder

CHAT = "A chat between a curious human and an artificial intelligence assistant."
CHAT_IDS = [1, 319, 13563, 1546, 263, 12758, 5199, 322, 385, 23116, 21082, 20255, 29889]
LLAVA = "USER: <image>\nWhat is in the image? ASSISTANT:"
LLAVA_IDS = [1, 3148, 1001, 29901, 529, 3027, 29958, 13, 5618, 338, 297, 278, 1967, 29973, 319, 1799, 9047,
             13566, 29901]


def test_reference_ids(llama_tokenizer):
  assert len(llama_tokenizer) == 32000
  assert (llama_tokenizer.bos_token_id, llama_tokenizer.eos_token_id, llama_tokenizer.unk_token_id) == (1, 2, 0)
  assert llama_tokenizer.pad_token_id == 0 and llama_tokenizer.padding_side == "right"
  enc = make_encoder(llama_tokenizer)
  assert enc.backend == "sentencepiece"
  for text, ids in ((CHAT, CHAT_IDS), (LLAVA, LLAVA_IDS)):
    assert llama_tokenizer(text).input_ids == ids
    assert enc.encode(text, True) == ids
  assert enc.encode("Hello world!", True) == [1, 15043, 3186, 29991]


def test_asset_is_verified_and_score_rule_reproduces_it(llama_tokenizer):
  data = (ot.DEFAULT_DIR / "tokenizer.model").read_bytes()
  assert hashlib.sha256(data).hexdigest() == ot.EXPECTED_SHA256
  proto = pb.ModelProto.FromString(data)
  pieces = [p.piece for p in proto.pieces]
  rebuilt = ot.serialize_model(pieces, ot.llama_scores_and_types(pieces))
  assert hashlib.sha256(rebuilt).hexdigest() == ot.EXPECTED_SHA256
  # A wrong score rule gives different bytes (so the sha check can catch it).
  wrong = [(s - 1.0 if i == 300 else s, t) for i, (s, t) in enumerate(ot.llama_scores_and_types(pieces))]
  assert hashlib.sha256(ot.serialize_model(pieces, wrong)).hexdigest() != ot.EXPECTED_SHA256


def test_is_complete_detects_tampering(llama_tokenizer, tmp_path):
  d = tmp_path / "tok"
  shutil.copytree(ot.DEFAULT_DIR, d)
  assert ot.is_complete(d)
  ot.build(d)  # idempotent: nothing to do, no network
  assert ot.is_complete(d)
  raw = bytearray((d / "tokenizer.model").read_bytes())
  raw[-1] ^= 1
  (d / "tokenizer.model").write_bytes(bytes(raw))
  assert not ot.is_complete(d)
  assert not ot.is_complete(tmp_path / "missing")


def test_pieces_from_js_parses_the_embedded_vocab():
  import base64
  vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + [f"p{i}" for i in range(32000 - 259)]
  js = 'const x = 1;\nconst llama_vocab_base64 = "' + base64.b64encode("\n".join(vocab).encode()).decode() + '";\n'
  assert ot.pieces_from_js(js) == vocab
  with pytest.raises(ValueError, match="llama_vocab_base64"):
    ot.pieces_from_js("const nothing = 1;")


def test_sentencepiece_encoder_follows_the_slow_tokenizer(llama_tokenizer):
  """Whitespace runs: transformers 5's LLaMA tokenizer differs, SentencePiece (as LLaVA) does not."""
  sp = spm.SentencePieceProcessor(model_file=str(ot.DEFAULT_DIR / "tokenizer.model"))
  enc = make_encoder(llama_tokenizer)
  for text in ("  two  spaces ", " x", "def f():\n    return 1", "a\tb"):
    assert enc.encode(text, False) == sp.encode(text)
  # Special tokens are split out; in legacy mode every text piece gets the dummy prefix.
  assert enc.encode("a</s>USER: b", True) == [1] + sp.encode("a") + [2] + sp.encode("USER: b")
  hf = make_encoder(llama_tokenizer, backend="hf")
  assert hf.encode(LLAVA, True) == LLAVA_IDS


def test_load_tokenizer_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="neither tokenizer.model nor tokenizer.json"):
    load_tokenizer(tmp_path)


def test_tiny_tokenizer_uses_same_paths(tiny_tokenizer):
  enc = make_encoder(tiny_tokenizer)
  assert enc.backend == "sentencepiece" and (enc.bos_id, enc.eos_id, enc.pad_id) == (1, 2, 0)
  assert enc.encode("hi</s>", True)[-1] == 2


def test_load_encoder_matches_transformers_route_without_importing_it(llama_tokenizer, tiny_tokenizer_dir):
  import subprocess
  import sys
  from acformer_jax.data.tokenizer import load_encoder
  texts = [CHAT, LLAVA, "a</s>USER: b", "  two  spaces ", "caf\u00e9 \U0001F600\n\n1234", "<unk>x<s>"]
  for enc, ref in ((load_encoder(), make_encoder(llama_tokenizer)),
                   (load_encoder(tiny_tokenizer_dir), make_encoder(load_tokenizer(tiny_tokenizer_dir)))):
    assert (enc.bos_id, enc.eos_id, enc.pad_id) == (ref.bos_id, ref.eos_id, ref.pad_id)
    for t in texts:
      assert enc.encode(t, True) == ref.encode(t, True), t
  code = ("import sys; from acformer_jax.data.tokenizer import load_encoder; e = load_encoder(); "
          "assert e.encode('Hello world!', True) == [1, 15043, 3186, 29991]; "
          "assert 'transformers' not in sys.modules and 'torch' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""Templates and label masking vs an independent re-implementation of LLaVA's preprocessing.

The reference below follows docs/method.md 2.4-2.6 literally (LLaVA's ``preprocess_v1`` /
``preprocess_plain``: tokenise the pieces with the tokenizer itself, round/instruction lengths
with the -2 correction, then -100 masks) and uses the transformers tokenizer directly, while the
implementation under test uses SentencePiece through ``make_encoder`` and prefix boundaries.
"""
import numpy as np
import pytest

from acformer_jax.data import templates as T
from acformer_jax.data.tokenizer import make_encoder

IGNORE, SENTINEL, IMG_ID, NV = -100, -200, 32000, 5
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")

MULTI_TURN = [
    {"from": "human", "value": "What is shown here?\n<image>"},
    {"from": "gpt", "value": "A red circle at the top left."},
    {"from": "human", "value": "How many shapes are there?"},
    {"from": "gpt", "value": "3"},
    {"from": "human", "value": "Is there a blue triangle? Answer yes or no."},
    {"from": "gpt", "value": "No, there is a green one.\nIt is small."},
]
IMAGE_FIRST = [
    {"from": "human", "value": "<image>\nDescribe the image briefly."},
    {"from": "gpt", "value": "Caf\u00e9 table, 2 cups; \u00fcber-clean."},
    {"from": "human", "value": "And the colours?"},
    {"from": "gpt", "value": "\nMostly brown."},
]
TEXT_ONLY = [
    {"from": "human", "value": "Write a haiku about JAX."},
    {"from": "gpt", "value": "Arrays fall like rain"},
    {"from": "human", "value": "Another one, please."},
    {"from": "gpt", "value": "Compiled once, run twice"},
]


def _ref_tokenizer_image_token(tok, prompt):
  chunks = [tok(c).input_ids for c in prompt.split("<image>")]
  out = [chunks[0][0]]  # keep one BOS
  for i, c in enumerate(chunks):
    if i:
      out.append(SENTINEL)
    out.extend(c[1:])
  return out


def _ref_v1(tok, conv, has_image):
  msgs = [dict(m) for m in conv]
  if has_image:
    for m in msgs:
      if "<image>" in m["value"]:
        m["value"] = ("<image>\n" + m["value"].replace("<image>", "").strip()).strip()
  prompt = SYSTEM + " "
  for i, m in enumerate(msgs):
    role = "USER" if m["from"] == "human" else "ASSISTANT"
    prompt += f"{role}: {m['value']}" + (" " if i % 2 == 0 else "</s>")
  tokenize = (lambda s: _ref_tokenizer_image_token(tok, s)) if has_image else (lambda s: tok(s).input_ids)
  ids = tokenize(prompt)
  target = list(ids)
  cur = 1
  target[:1] = [IGNORE]
  for rou in prompt.split("</s>"):
    if rou == "":
      break
    parts = rou.split(" ASSISTANT: ")
    assert len(parts) == 2
    round_len = len(tokenize(rou))
    instruction_len = len(tokenize(parts[0] + " ASSISTANT: ")) - 2
    target[cur:cur + instruction_len] = [IGNORE] * instruction_len
    cur += round_len
  target[cur:] = [IGNORE] * (len(target) - cur)
  assert cur == len(ids), "reference tokenization mismatch"
  return ids, target


def _ref_plain(tok, conv):
  prompt = "<image>" + conv[1]["value"] + "\n"
  ids = _ref_tokenizer_image_token(tok, prompt)
  n = len(_ref_tokenizer_image_token(tok, "<image>"))
  return ids, [IGNORE] * n + ids[n:]


def _ref_expand(ids, labels):
  out_i, out_l = [], []
  for i, l in zip(ids, labels):
    if i == SENTINEL:
      out_i += [IMG_ID] * NV
      out_l += [IGNORE] * NV
    else:
      out_i.append(i)
      out_l.append(l)
  return out_i, out_l


def _ours(tok, conv, has_image, template, max_length=4096, **kw):
  return T.tokenize_conversation(conv, has_image=has_image, template=template, encoder=make_encoder(tok),
                                 num_visual_tokens=NV, image_token_id=IMG_ID, max_length=max_length, **kw)


@pytest.fixture(params=["llama", "tiny"])
def tok(request):
  return request.getfixturevalue("llama_tokenizer" if request.param == "llama" else "tiny_tokenizer")


@pytest.mark.parametrize("conv,has_image", [(MULTI_TURN, True), (IMAGE_FIRST, True), (TEXT_ONLY, False)])
def test_vicuna_v1_matches_llava_reference(tok, conv, has_image):
  ref_ids, ref_labels = _ref_expand(*_ref_v1(tok, conv, has_image))
  got = _ours(tok, conv, has_image, "vicuna_v1")
  np.testing.assert_array_equal(got.input_ids, ref_ids)
  np.testing.assert_array_equal(got.labels, ref_labels)
  # Supervised text = the answers + </s>; the visual slots are masked.
  n_sup = int(np.sum(got.labels != IGNORE))
  assert n_sup > 0 and not np.any(got.labels[got.input_ids == IMG_ID] != IGNORE)
  assert int(np.sum(got.input_ids == IMG_ID)) == (NV if has_image else 0)
  assert np.sum(got.labels == tok.eos_token_id) == len(conv) // 2


@pytest.mark.parametrize("caption", ["A red circle at the top left.", "two cats, 3 dogs \u00e9t\u00e9\n"])
def test_plain_matches_llava_reference(tok, caption):
  conv = [{"from": "human", "value": "Describe briefly.\n<image>"}, {"from": "gpt", "value": caption}]
  ref_ids, ref_labels = _ref_expand(*_ref_plain(tok, conv))
  got = _ours(tok, conv, True, "plain")
  np.testing.assert_array_equal(got.input_ids, ref_ids)
  np.testing.assert_array_equal(got.labels, ref_labels)
  assert got.input_ids[0] == tok.bos_token_id and got.input_ids[-1] == tok("\n").input_ids[-1]
  assert tok.eos_token_id not in got.input_ids.tolist()  # plain: no EOS


def test_truncation_after_expansion(llama_tokenizer):
  full = _ours(llama_tokenizer, MULTI_TURN, True, "vicuna_v1")
  cut = _ours(llama_tokenizer, MULTI_TURN, True, "vicuna_v1", max_length=len(full.input_ids) - 7)
  assert cut.truncated and not full.truncated
  np.testing.assert_array_equal(cut.input_ids, full.input_ids[:len(full.input_ids) - 7])
  np.testing.assert_array_equal(cut.labels, full.labels[:len(full.labels) - 7])
  with pytest.raises(T.SampleError) as e:
    _ours(llama_tokenizer, MULTI_TURN, True, "vicuna_v1", max_length=len(full.input_ids) - 1, overlong="skip")
  assert e.value.reason == "too_long"
  with pytest.raises(T.SampleError) as e:  # the image + question fill everything: nothing to learn
    _ours(llama_tokenizer, MULTI_TURN, True, "vicuna_v1", max_length=40)
  assert e.value.reason == "no_supervised_tokens"


@pytest.mark.parametrize("conv,has_image,template,reason", [
    ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}], True, "vicuna_v1", "missing_image_token"),
    ([{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}], False, "vicuna_v1",
     "unexpected_image_token"),
    ([{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "<image>c"},
      {"from": "gpt", "value": "d"}], True, "vicuna_v1", "multiple_image_tokens"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}], True, "vicuna_v1",
     "misplaced_image_token"),
    ([{"from": "human", "value": "<image>a"}, {"from": "human", "value": "b"}], True, "vicuna_v1", "bad_roles"),
    ([{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}],
     True, "vicuna_v1", "bad_roles"),
    ([{"from": "human", "value": "<image>a"}, {"from": "bot", "value": "b"}], True, "vicuna_v1", "bad_roles"),
    ([{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "  "}], True, "vicuna_v1", "empty_answer"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], False, "plain", "missing_image_token"),
    ([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"},
      {"from": "gpt", "value": "d"}], True, "plain", "bad_roles"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}], True, "vicuna_v1", "bad_record"),
])
def test_bad_conversations_raise_with_reason(conv, has_image, template, reason):
  with pytest.raises(T.SampleError) as e:
    T.normalize_turns(conv, has_image=has_image, template=template)
  assert e.value.reason == reason


def test_leading_gpt_turn_is_dropped_like_llava():
  conv = [{"from": "gpt", "value": "hello"}] + IMAGE_FIRST
  assert T.normalize_turns(conv, has_image=True, template="vicuna_v1") == \
      T.normalize_turns(IMAGE_FIRST, has_image=True, template="vicuna_v1")


def test_generation_prompt_matches_eval_spec(llama_tokenizer):
  p = T.generation_prompt("What is in the image?")
  assert p == SYSTEM + " USER: <image>\nWhat is in the image? ASSISTANT:"
  enc = make_encoder(llama_tokenizer)
  ids = T.encode_generation_prompt(enc, "What is in the image?", has_image=True, num_visual_tokens=3,
                                   image_token_id=IMG_ID)
  ref = _ref_tokenizer_image_token(llama_tokenizer, p)
  k = ref.index(SENTINEL)
  np.testing.assert_array_equal(ids, ref[:k] + [IMG_ID] * 3 + ref[k + 1:])
  # LLaVA quirk (docs/benchmarks.md 1): the chunk after <image> starts with the dummy-prefix token, then "\n".
  assert ref[k + 1:k + 3] == [29871, 13]

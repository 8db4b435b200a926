"""Text-level generation (docs/benchmarks.md 1): prompts, chunk-wise tokenisation with the image
expanded, the runner's generate_fn contract, and a run of the evaluation runner."""
import json

import numpy as np
import pytest
from PIL import Image

from acformer_jax.data import templates
from acformer_jax.inference import engine as E
from acformer_jax.inference import loading, pipeline, sampling
from tests.inference import tiny_model as T

SYSTEM = templates.VICUNA_SYSTEM


@pytest.fixture(scope="module")
def gen(tiny_checkpoint):
  return pipeline.Generator(loading.load_for_inference(tiny_checkpoint[0]), bucket_multiple=64)


def _photo(seed, size=(40, 24)):
  rng = np.random.RandomState(seed)
  return Image.fromarray(rng.randint(0, 256, size=size[::-1] + (3,), dtype=np.uint8))


def test_conversation_prompt_follows_vicuna_v1():
  first = pipeline.conversation_prompt([], "What is it?", has_image=True)
  assert first == templates.generation_prompt("What is it?", has_image=True)
  assert first == f"{SYSTEM} USER: <image>\nWhat is it? ASSISTANT:"
  second = pipeline.conversation_prompt([("What is it?", "A cat.")], "Color?", has_image=True)
  assert second == f"{SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"
  text = pipeline.conversation_prompt([("Hi", "Hello.")], "Bye", has_image=False)
  assert text == f"{SYSTEM} USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:"
  with pytest.raises(ValueError, match="vicuna_v1"):
    pipeline.conversation_prompt([("a", "b")], "c", has_image=True, template="plain")


def test_encode_is_chunkwise_with_the_image_expanded(gen):
  prompt = templates.generation_prompt("Is there a cat?")
  ids = gen.encode(prompt, has_image=True)
  want = templates.tokenize_chunks(gen.encoder, prompt)
  k = want.index(templates.IMAGE_PLACEHOLDER)
  assert ids.tolist() == want[:k] + [T.CKPT_CONFIG.image_token_id] * T.NV + want[k + 1:]
  assert ids[0] == 1 and want.count(1) == 1  # one BOS, only on the first chunk
  with pytest.raises(ValueError, match="item 0: the prompt has 0 <image> marker"):
    gen.encode("no marker", has_image=True)
  with pytest.raises(ValueError, match="item 3: the prompt has 1 <image> marker"):
    gen.encode(prompt, has_image=False, index=3)


def test_prepare_image_pads_to_square_like_llava():
  img = _photo(0)
  got = pipeline.prepare_image(img, 28)
  canvas = Image.new("RGB", (40, 40), (122, 116, 104))
  canvas.paste(img, (0, 8))
  want = (np.asarray(canvas.resize((28, 28), Image.Resampling.BICUBIC), np.float32) / 255
          - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
              [0.26862954, 0.26130258, 0.27577711])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_generate_fn_is_greedy_engine_output_decoded(gen):
  img = _photo(1)
  prompts = [templates.generation_prompt("What is in the image?"),
             templates.generation_prompt("Name three colors.", has_image=False)]
  texts = gen.generate_fn([(img, prompts[0]), (None, prompts[1])], max_new_tokens=128)
  reqs = [E.Request(gen.encode(prompts[0], True).tolist(), pipeline.prepare_image(img, 56)),
          E.Request(gen.encode(prompts[1], False).tolist())]
  res = gen.engine.generate(reqs, max_new_tokens=128, sampler=sampling.GREEDY)
  want = [gen.tokenizer.decode(r.tokens, skip_special_tokens=True).strip() for r in res]
  assert texts == want and all(texts), texts
  # Host-side stop strings cut the text before the first occurrence.
  word = texts[0].split()[-1]
  cut, = gen.generate([(img, prompts[0])], max_new_tokens=128, stop_strings=[word])
  assert cut == texts[0][:texts[0].find(word)].strip()


def test_evaluation_runner_writes_llava_answers(gen, tmp_path):
  from acformer_jax.evals import runner  # the evaluate runner (evals/runner.py)
  (tmp_path / "img").mkdir()
  for i in range(2):
    _photo(10 + i).save(tmp_path / "img" / f"{i}.png")
  qs = [{"question_id": i + 1, "image": f"{i}.png", "category": "random",
         "text": f"Is there a {w}?\nAnswer the question using a single word or phrase."}
        for i, w in enumerate(("cat", "dog"))]
  out = runner.run("pope", qs, generate_fn=gen.generate_fn, output=tmp_path / "a.jsonl",
                   images_dir=tmp_path / "img", batch_size=2, progress=False)
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["question_id"] for r in recs] == [1, 2]
  for q, r in zip(qs, recs):
    prompt = templates.generation_prompt(q["text"])
    img = Image.open(tmp_path / "img" / q["image"]).convert("RGB")
    want, = gen.generate_fn([(img, prompt)], max_new_tokens=128)
    assert r["text"] == want and r["prompt"] == q["text"]

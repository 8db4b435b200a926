"""The LLaVA user's fine-tune path end to end (issue #15 items 1, 2, 5; docs/training.md):

  python -m acformer_jax.train --config configs/finetune.py \\
      --config.init.from_pretrained=DIR --config.data.json_path=my.json \\
      --config.data.image_root=imgs --config.train.steps=N --workdir W

on a tiny random transformers ``LlavaForConditionalGeneration`` directory with a real
SentencePiece tokenizer that has ``<image>`` and ``<pad>`` added; then ``export --format
hf-llava`` loads in ``AutoProcessor`` + ``LlavaForConditionalGeneration`` and transformers'
logits on the export match ours.
"""
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from acformer_jax import load_pretrained
from acformer_jax.conversion import exporting
from acformer_jax.data import offline_tokenizer, templates
from acformer_jax.data.tokenizer import load_encoder, make_encoder
from acformer_jax.trainer import experiment, pretrained
from acformer_jax.trainer.validate import ConfigError
from tests import cpu_compile
from tests.conversion import tiny_checkpoints as T

ROOT = pathlib.Path(__file__).resolve().parents[2]
VOCAB, IMAGE_ID, PAD_ID = 502, 500, 501   # 500 SentencePiece pieces + <image> + <pad>
TOL = 2e-4
QUESTIONS = ["What is in the image?", "What colour is the square?", "How many circles are there?"]
ANSWERS = ["A red square at the top left.", "The square is red.", "There are 2 circles."]


def _tokenizer(directory: pathlib.Path) -> pathlib.Path:
  """A 500-piece LLaMA-style SentencePiece model + added ``<image>`` (500) and ``<pad>`` (501),
  saved by transformers as llava-hf ships it (tokenizer.json + tokenizer_config.json)."""
  import sentencepiece as spm
  corpus = [templates.VICUNA_SYSTEM, "USER: ASSISTANT:"] + QUESTIONS + ANSWERS
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus * 20), model_writer=buf, vocab_size=500, model_type="bpe",
      byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True,
      allow_whitespace_only_pieces=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2)
  sp = directory.parent / "sp_tokenizer"
  sp.mkdir()
  (sp / "tokenizer.model").write_bytes(buf.getvalue())
  (sp / "tokenizer_config.json").write_text(json.dumps(offline_tokenizer.TOKENIZER_CONFIG))
  tok = transformers.AutoTokenizer.from_pretrained(str(sp))
  tok.add_tokens([templates.IMAGE_TOKEN], special_tokens=True)
  tok.add_special_tokens({"pad_token": "<pad>"})
  assert tok.convert_tokens_to_ids([templates.IMAGE_TOKEN, "<pad>"]) == [IMAGE_ID, PAD_ID]
  tok.save_pretrained(str(directory))
  return directory


def _data(root: pathlib.Path):
  rng = np.random.RandomState(0)
  (root / "imgs").mkdir(parents=True)
  records = []
  for i in range(8):
    h, w = (40, 70) if i % 2 else (64, 48)  # not square: pad_to_square matters
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    records.append({"id": str(i), "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\n" + QUESTIONS[i % 3]},
        {"from": "gpt", "value": ANSWERS[i % 3]}]})
  (root / "my.json").write_text(json.dumps(records))
  return root / "my.json", root / "imgs"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("ft") / "llava-hf"
  T.hf_llava(d, layout="transformers5", vocab=VOCAB, image_id=IMAGE_ID)
  _tokenizer(d)
  return d


@pytest.fixture(scope="module")
def run(hf_dir, tmp_path_factory):
  """The README command (+ a tiny batch, a tfds dir and a visible learning rate)."""
  tmp = tmp_path_factory.mktemp("ft_run")
  json_path, imgs = _data(tmp)
  workdir = tmp / "W"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=cpu_compile.with_flags(),
             PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "acformer_jax.train", "--config", str(ROOT / "configs/finetune.py"),
         f"--config.init.from_pretrained={hf_dir}", f"--config.data.json_path={json_path}",
         f"--config.data.image_root={imgs}", "--config.train.steps=2", "--workdir", str(workdir),
         f"--config.data.data_dir={tmp / 'tfds'}", "--config.train.global_batch_size=2",
         "--config.train.optimizer.lr=1e-2", "--config.train.optimizer.warmup_ratio=0",
         "--config.checkpoint.async_save=False", "--config.train.progress_bar=False",
         f"--compile_cache={tmp / 'xla'}"]
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
  (tmp / "stderr.txt").write_text(res.stderr)
  assert res.returncode == 0, res.stderr[-4000:]
  return workdir, res


def test_finetune_command_trains_the_checkpoint(run, hf_dir):
  workdir, res = run
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["step"] == 2
  assert np.isfinite(summary["last_metrics"]["loss"])
  exp = json.loads((workdir / "export" / "experiment_config.json").read_text())
  mc = json.loads((workdir / "export" / "model_config.json").read_text())
  hf = json.loads((hf_dir / "config.json").read_text())
  # Model-shaped fields came from the checkpoint; the template defaults too.
  assert mc["image_token_id"] == IMAGE_ID and mc["llm"]["vocab_size"] == VOCAB
  assert mc["llm"]["hidden_size"] == hf["text_config"]["hidden_size"]
  assert mc["vision"]["image_size"] == hf["vision_config"]["image_size"]
  assert mc["connector"]["type"] == "mlp2x_gelu"
  assert exp["data"]["tokenizer_path"] == str(hf_dir)
  assert (exp["data"]["template"], exp["data"]["pad_to_square"]) == ("vicuna_v1", True)
  assert exp["data"]["max_length"] == 128  # LLaVA's 2048 capped by max_position_embeddings
  # The export ships the tokenizer the run trained with (added tokens included).
  assert (workdir / "export/tokenizer/tokenizer.json").read_bytes() == \
      (hf_dir / "tokenizer.json").read_bytes()
  # Quiet by default: no Orbax/absl INFO lines, no TPU-backend warning on CPU.
  assert "Unable to initialize backend" not in res.stderr
  assert not _foreign_info_lines(res.stderr), res.stderr
  assert "Generating splits" not in res.stderr  # no tfds progress bars between log lines


def test_export_loads_in_transformers_and_logits_match(run, hf_dir, tmp_path):
  workdir, _ = run
  out = exporting.export(workdir / "export", "hf-llava", tmp_path / "hf")
  for f in ("preprocessor_config.json", "processor_config.json", "tokenizer.json",
            "config.json"):
    assert (out / f).is_file(), f
  processor = transformers.AutoProcessor.from_pretrained(str(out))
  assert processor.image_processor.do_pad  # LLaVA-1.5 pads to square (hf_processor docstring)
  torch_model = transformers.LlavaForConditionalGeneration.from_pretrained(
      str(out), dtype=torch.float32).eval()
  # Trained: the exported weights differ from the source checkpoint's.
  src = transformers.LlavaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32)
  w = lambda m: m.get_output_embeddings().weight.detach()  # noqa: E731
  assert not torch.equal(w(torch_model), w(src))

  tok = processor.tokenizer
  assert tok.convert_tokens_to_ids([templates.IMAGE_TOKEN, "<pad>"]) == [IMAGE_ID, PAD_ID]
  # AutoTokenizer on the export gives the ids the run used (chunk-wise around <image>).
  run_encoder = load_encoder(json.loads(
      (workdir / "export/experiment_config.json").read_text())["data"]["tokenizer_path"])
  conv = [("human", "<image>\nWhat is in the image?"), ("gpt", "A red square at the top left.")]
  prompt, _ = templates.build_prompt(conv, "vicuna_v1")
  want = templates.tokenize_chunks(run_encoder, prompt)
  assert templates.tokenize_chunks(make_encoder(transformers.AutoTokenizer.from_pretrained(
      str(out))), prompt) == want
  assert tok(prompt.split("<image>")[0]).input_ids == want[:want.index(templates.IMAGE_PLACEHOLDER)]
  # The chat template renders vicuna_v1 exactly.
  msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
  rendered = processor.apply_chat_template(msgs, add_generation_prompt=True)
  assert rendered == templates.generation_prompt(QUESTIONS[0])

  image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (40, 70, 3), dtype=np.uint8))
  inputs = processor(images=image, text=rendered, return_tensors="pt")
  assert int((inputs["input_ids"] == IMAGE_ID).sum()) == 16  # (56 / 14)^2 patches
  with torch.no_grad():
    ref = torch_model(**inputs).logits.numpy()
  model, params = load_pretrained(workdir / "export", dtype="float32")
  ours = jax.jit(model.apply)({"params": params}, jax.numpy.asarray(
      inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)), jax.numpy.asarray(
          inputs["input_ids"].numpy()))
  err = float(np.max(np.abs(np.asarray(ours) - ref)))
  assert err <= TOL * max(1.0, float(np.abs(ref).max())), err


def _finetune_config(**model):
  import importlib.util
  spec = importlib.util.spec_from_file_location("finetune_cfg", ROOT / "configs/finetune.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for dotted, v in model.items():
    section, field = dotted.split("__")
    c.model[section][field] = v
  return c


def test_contradicting_override_names_each_field_and_both_values(hf_dir):
  c = _finetune_config(llm__hidden_size=64, vision__image_size=112)
  c.init.from_pretrained = str(hf_dir)
  with pytest.raises(ConfigError) as e:
    pretrained.resolve(c)
  msg = str(e.value)
  assert "model.llm.hidden_size: config 64 vs checkpoint 32" in msg
  assert "model.vision.image_size: config 112 vs checkpoint 56" in msg
  # An agreeing explicit value is fine; unset fields and the tokenizer come from the checkpoint.
  c = _finetune_config(llm__hidden_size=32)
  c.init.from_pretrained = str(hf_dir)
  r = pretrained.resolve(c)
  assert r.model.image_token_id == IMAGE_ID and r.data.tokenizer_path == str(hf_dir)
  assert experiment.init_sources(r.init)["llm"] == {
      "kind": "pretrained", "path": str(hf_dir), "prefix": "llm"}


def test_finetune_config_needs_a_checkpoint():
  from acformer_jax.trainer.validate import validate
  with pytest.raises(ConfigError, match="init.from_pretrained"):
    validate(_finetune_config(), num_devices=1)


def test_from_pretrained_accepts_a_run_directory(run):
  workdir, _ = run
  pre = pretrained.inspect(workdir)
  assert pre.kind == "acformer" and pre.directory == workdir / "export"
  assert pre.tokenizer_dir == workdir / "export" / "tokenizer"
  assert pre.data_defaults == {"template": "vicuna_v1", "pad_to_square": True, "max_length": 128}


def _foreign_info_lines(stderr: str):
  """absl-format INFO lines from files outside acformer_jax (Orbax, tfds, JAX...)."""
  ours = {p.name for p in (ROOT / "acformer_jax").rglob("*.py")}
  out = []
  for line in stderr.splitlines():
    m = re.match(r"I\d{4} .*? (\S+\.py):\d+\]", line)
    if m and m.group(1) not in ours:
      out.append(line)
  return out


def test_default_evaluate_run_is_quiet(run, tmp_path):
  """`evaluate run` on the export restores it with Orbax and prints no Orbax INFO lines."""
  workdir, _ = run
  (tmp_path / "img").mkdir()
  Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "img" / "a.png")
  qs = [{"question_id": 1, "image": "a.png", "text": QUESTIONS[0], "category": "color"}]
  (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  env.pop("JAX_PLATFORMS", None)  # a CPU host probing for a TPU says nothing either
  res = subprocess.run(
      [sys.executable, "-m", "acformer_jax.evaluate", "run", "--checkpoint",
       str(workdir / "export"), "--benchmark", "demo", "--questions", str(tmp_path / "q.jsonl"),
       "--images", str(tmp_path / "img"), "--output", str(tmp_path / "a.jsonl")],
      env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert res.returncode == 0, res.stderr[-3000:]
  assert (tmp_path / "a.jsonl").is_file()
  assert not _foreign_info_lines(res.stderr), res.stderr
  assert "Unable to initialize backend" not in res.stderr


def test_generate_reads_an_hf_llava_directory(hf_dir, tmp_path, capsys):
  from acformer_jax import generate
  Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "a.png")
  assert generate.main(["--checkpoint", str(hf_dir), "--image", str(tmp_path / "a.png"),
                        "--prompt", QUESTIONS[0], "--max_new_tokens", "3"]) == 0
  assert capsys.readouterr().out.endswith("\n")


def test_params_from_a_run_brings_its_tokenizer(run):
  workdir, _ = run
  c = experiment.base_config()
  c.init.params_from = f"orbax:{workdir}"
  r = pretrained.resolve(c)
  assert r.data.tokenizer_path == str(workdir / "export" / "tokenizer")
  c.data.tokenizer_path = "/explicit"
  assert pretrained.resolve(c).data.tokenizer_path == "/explicit"


def test_export_reads_an_hf_llava_directory(hf_dir, tmp_path):
  """`export --checkpoint <HF dir>`: converted on the fly, written back bit for bit."""
  out = exporting.export(hf_dir, "hf-llava", tmp_path / "again")
  got, want = T.files_state(out), T.files_state(hf_dir)
  assert sorted(got) == sorted(want)
  assert all(torch.equal(got[k], want[k]) for k in want)
  assert transformers.AutoProcessor.from_pretrained(str(out)).tokenizer.convert_tokens_to_ids(
      "<pad>") == PAD_ID

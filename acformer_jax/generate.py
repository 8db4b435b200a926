"""Generate answers about one image from the command line (``docs/benchmarks.md`` 1 prompt protocol).

  python -m acformer_jax.generate --checkpoint DIR --image PATH --prompt "What is this?"
  python -m acformer_jax.generate --checkpoint DIR --image PATH --interactive < questions.txt

The prompt uses the LLM family's template (``vicuna_v1`` for LLaMA-2/Vicuna); decoding is
greedy unless ``--temperature`` > 0 (then ``--top_k`` / ``--top_p`` filter the distribution). ``--interactive`` is a multi-turn
chat on one image like LLaVA's CLI: every stdin line is a user turn, the conversation is
kept, and each answer is printed as ``ASSISTANT: ...``; an empty input, ``exit`` or EOF ends
it. ``DIR`` is an inference checkpoint (docs/inference.md) or a transformers Llava
directory (converted on the fly, nothing written).
"""
from __future__ import annotations

import pathlib
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app

from acformer_jax import cli

_CHECKPOINT = cli.define("string", "checkpoint", None, "Checkpoint directory (model_config.json "
                         "+ params/, a training export) or a transformers Llava directory.")
_IMAGE = cli.define("string", "image", None, "Image file (omit for a text-only prompt).")
_PROMPT = cli.define("string", "prompt", None, "Question (required unless --interactive).")
_INTERACTIVE = cli.define("bool", "interactive", False, "Multi-turn chat from stdin.")
_TEMPLATE = cli.define("string", "template", None, "Conversation template (default: the LLM "
                       "family's, e.g. vicuna_v1).")
_MAX_NEW = cli.define("integer", "max_new_tokens", 512, "Most tokens generated per answer.")
_TEMPERATURE = cli.define("float", "temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_K = cli.define("integer", "top_k", 0, "Top-k filter; 0 = off.")
_TOP_P = cli.define("float", "top_p", 1.0, "Nucleus filter; 1 = off.")
_SEED = cli.define("integer", "seed", 0, "Sampling seed.")
_STOP = cli.define("multi_string", "stop", [], "Extra stop string (repeatable).")
_TOKENIZER = cli.define("string", "tokenizer", None, "Tokenizer directory (default: the "
                        "checkpoint's).")
_MESH = cli.define("string", "mesh", None, "Local mesh data,fsdp,tensor, e.g. 1,1,-1 "
                   "(default: one device).")
_DTYPE = cli.define("string", "dtype", None, "Compute dtype override, e.g. bfloat16.")
_BUCKET = cli.define("integer", "bucket", 64, "Prompt-length bucket (jit shapes).")
cli.show_common_flags()


def _mesh(text: Optional[str]):
  if not text:
    return None
  try:
    mesh = tuple(int(x) for x in text.split(","))
  except ValueError:
    raise app.UsageError(f"--mesh must be three comma-separated ints, got {text!r}") from None
  if len(mesh) != 3:
    raise app.UsageError(f"--mesh must be data,fsdp,tensor, got {text!r}")
  return mesh


def _load_image(path: Optional[str]):
  if path is None:
    return None
  from PIL import Image  # pylint: disable=import-outside-toplevel
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"--image {p}: no such file")
  try:
    img = Image.open(p)
    img.load()
  except (OSError, Image.DecompressionBombError) as e:  # a bomb is not an OSError
    raise ValueError(f"--image {p}: cannot read the image ({e})") from None
  return img.convert("RGB")  # LLaVA's CLI converts to RGB


def _turns(first: Optional[str]):
  """The user turns: ``first`` (if any), then stdin lines until an empty one / exit / EOF."""
  if first:
    yield first
  tty = sys.stdin.isatty()
  while True:
    if tty:
      print("USER: ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line or not line.strip() or line.strip().lower() in ("exit", "quit"):
      return
    yield line.strip()


def generate(args) -> int:
  """Answers ``args.prompt`` (or the stdin turns) about ``args.image``; prints the answers."""
  import jax  # pylint: disable=import-outside-toplevel
  from acformer_jax.inference import pipeline, sampling  # pylint: disable=import-outside-toplevel
  from acformer_jax.models import registry  # pylint: disable=import-outside-toplevel
  sampler = sampling.SamplerConfig(args.temperature, args.top_k, args.top_p)
  image = _load_image(args.image)
  gen = pipeline.load_generator(args.checkpoint, mesh_shape=args.mesh, dtype=args.dtype,
                                tokenizer=args.tokenizer, bucket_multiple=args.bucket)
  rng = jax.random.PRNGKey(args.seed)
  template = args.template or registry.family(gen.config.llm.family).template
  history: List[Tuple[str, str]] = []
  turns = _turns(args.prompt) if args.interactive else [args.prompt]
  for i, question in enumerate(turns):
    prompt = pipeline.conversation_prompt(history, question, has_image=image is not None,
                                          template=template)
    answer, = gen.generate([(image, prompt)], max_new_tokens=args.max_new_tokens,
                           sampler=sampler, rng=jax.random.fold_in(rng, i),
                           stop_strings=args.stop)
    print(f"ASSISTANT: {answer}" if args.interactive else answer, flush=True)
    history.append((question, answer))
  return 0


def _args():
  import types  # pylint: disable=import-outside-toplevel
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required")
  if not _INTERACTIVE.value and not _PROMPT.value:
    raise app.UsageError("--prompt is required unless --interactive")
  return types.SimpleNamespace(
      checkpoint=_CHECKPOINT.value, image=_IMAGE.value, prompt=_PROMPT.value,
      interactive=_INTERACTIVE.value, template=_TEMPLATE.value, max_new_tokens=_MAX_NEW.value,
      temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
      stop=list(_STOP.value or []), tokenizer=_TOKENIZER.value, mesh=_mesh(_MESH.value),
      dtype=_DTYPE.value, bucket=_BUCKET.value)


def _main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  args = _args()
  try:
    return generate(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
  """In-process entry (``argv`` without the program name); usage errors exit with 2."""
  try:
    rest = cli.parse_in_process("generate", argv if argv is not None else sys.argv[1:])
    return _main(rest)
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def run() -> None:
  cli.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  run()

"""Generate answers about one image from the command line (``eval.md`` 1 prompt protocol).

  python -m acformer_jax.generate --checkpoint DIR --image PATH --prompt "What is this?"
  python -m acformer_jax.generate --checkpoint DIR --image PATH --interactive < questions.txt

The prompt uses the ``vicuna_v1`` template; decoding is greedy unless ``--temperature`` > 0
(then ``--top_k`` / ``--top_p`` filter the distribution). ``--interactive`` is a multi-turn
chat on one image like LLaVA's CLI: every stdin line is a user turn, the conversation is
kept, and each answer is printed as ``ASSISTANT: ...``; an empty input, ``exit`` or EOF ends
it. ``DIR`` is an inference checkpoint (docs/inference.md).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import List, Optional, Tuple


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m acformer_jax.generate",
                              description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="inference checkpoint directory")
  p.add_argument("--image", help="image file (omit for a text-only prompt)")
  p.add_argument("--prompt", help="question (required unless --interactive)")
  p.add_argument("--interactive", action="store_true", help="multi-turn chat from stdin")
  p.add_argument("--template", default=None,
                 help="conversation template (default: the LLM family's, e.g. vicuna_v1)")
  p.add_argument("--max_new_tokens", type=int, default=512)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=0, help="0 = off")
  p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  p.add_argument("--stop", action="append", default=[], help="extra stop string (repeatable)")
  p.add_argument("--tokenizer", help="tokenizer directory (default: from the checkpoint)")
  p.add_argument("--mesh", help="local mesh data,fsdp,tensor, e.g. 1,1,-1 (default: 1 device)")
  p.add_argument("--dtype", help="compute dtype override, e.g. bfloat16")
  p.add_argument("--bucket", type=int, default=64, help="prompt-length bucket (jit shapes)")
  args = p.parse_args(argv)
  if not args.interactive and not args.prompt:
    p.error("--prompt is required unless --interactive")
  if args.mesh:
    try:
      args.mesh = tuple(int(x) for x in args.mesh.split(","))
    except ValueError:
      p.error(f"--mesh must be three comma-separated ints, got {args.mesh!r}")
    if len(args.mesh) != 3:
      p.error(f"--mesh must be data,fsdp,tensor, got {args.mesh}")
  return args


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
  except OSError as e:
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


def run(args) -> int:
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


def main(argv=None) -> int:
  args = _parse(argv)
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())

"""A deterministic stand-in engine for the `evaluate run` CLI test (runner test double only)."""


def load(checkpoint):
  """Returns a generate_fn answering "red" (with whitespace the runner must strip)."""
  del checkpoint

  def generate_fn(batch, *, max_new_tokens):
    assert max_new_tokens == 128
    return [" red\n" if image is not None and "ASSISTANT:" in prompt else "?"
            for image, prompt in batch]

  return generate_fn

"""Session fixtures for the inference tests."""
import pytest

from tests.inference import tiny_model


@pytest.fixture(scope="session")
def tiny():
  """``(MultimodalLM, params)`` of the tiny random model, built once per session."""
  return tiny_model.init_params()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny):
  """A params directory (params_store.save) of a tiny
  random model with a tiny trained SentencePiece tokenizer, plus its params."""
  from acformer_jax import params_store  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("ckpt")
  tok = tiny_model.make_tokenizer(root / "tok_src")
  params = tiny[1]
  params_store.save(root / "model", params, tiny_model.CKPT_CONFIG, tokenizer_dir=tok)
  return root / "model", params

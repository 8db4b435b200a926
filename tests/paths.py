"""Where the tests find LLaVA's evaluation fixtures: `tests/fixtures/eval/` in the repository
(xz-compressed; provenance in its PROVENANCE.md). `ACFORMER_EVAL_FIXTURES` may name another
folder with the same layout (plain or compressed files) instead."""
import gzip
import lzma
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL_FIXTURES = pathlib.Path(os.environ.get("ACFORMER_EVAL_FIXTURES")
                             or ROOT / "tests" / "fixtures" / "eval")


def fixture(rel: str) -> pathlib.Path:
  """The stored file for logical fixture path `rel` (`rel` itself or `rel.xz` / `rel.gz`)."""
  from acformer_jax.evals import io as eio  # pylint: disable=g-import-not-at-top
  found = eio.locate(EVAL_FIXTURES / rel)
  if found is None:
    raise FileNotFoundError(f"evaluation fixture {rel} (or {rel}.xz) is missing under "
                            f"{EVAL_FIXTURES}")
  return found


def fixture_bytes(rel: str) -> bytes:
  """The decompressed bytes of fixture `rel`."""
  path = fixture(rel)
  opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
  with opener(path, "rb") as f:
    return f.read()


def fixture_text(rel: str) -> str:
  """The decompressed text of fixture `rel`."""
  from acformer_jax.evals import io as eio  # pylint: disable=g-import-not-at-top
  return eio.read_text(fixture(rel))

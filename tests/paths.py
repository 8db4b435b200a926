"""Where the tests find the project's shared material outside the repository: the spec and
LLaVA's evaluation fixtures (``shared/``, next to the checkout by default; set
``ACFORMER_SHARED_DIR`` when the checkout lives elsewhere)."""
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("ACFORMER_SHARED_DIR") or ROOT.parent / "shared")
EVAL_FIXTURES = SHARED / "eval_fixtures"


def missing_fixtures_message() -> str:
  return (f"LLaVA's evaluation fixtures are missing at {EVAL_FIXTURES}: set ACFORMER_SHARED_DIR "
          "to the shared/ folder that holds eval_fixtures/")

#!/usr/bin/env bash
# Sets everything up, then runs the test suite. Extra arguments go to pytest; --slow (first)
# also runs the tests marked slow (deselected by default to keep the suite under 15 minutes).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,3p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
bash launch/setup.sh
export JAX_PLATFORMS=cpu
# Two workers (pytest-xdist): most tests are compile-bound on one core. PYTEST_WORKERS=0 runs
# them in this process.
SELECT=(-m "not slow")
if [[ "${1:-}" == "--slow" ]]; then SELECT=(); shift; fi
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist load \
  "${SELECT[@]}" "$@" tests

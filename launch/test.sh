#!/usr/bin/env bash
# Sets everything up, then runs the test suite. Extra arguments go to pytest.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n 2,2p "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cd "$(dirname "$0")/.."
bash launch/setup.sh
export JAX_PLATFORMS=cpu
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests

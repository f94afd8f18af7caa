#!/usr/bin/env bash
# Set up, fetch the embedded model and the offline benchmark data, run the whole test suite.
# Without arguments (as CI runs it) every test must run: REGENESIS_FULL_SUITE=1 refuses -m, -k, --deselect,
# test paths and PYTEST_ADDOPTS (see tests/conftest.py), and the 25 slowest tests are listed at the end
# (REGENESIS_DURATIONS=0: every test, for tests/README.md).
# Extra arguments go to pytest and run a part, e.g. `scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
if [ "$#" -eq 0 ]; then
  export REGENESIS_FULL_SUITE=1
fi
exec "${REGENESIS_VENV:-.venv}/bin/python" -m pytest -q --durations="${REGENESIS_DURATIONS:-25}" "$@"

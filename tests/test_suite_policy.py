"""CI's full-suite rule (tests/conftest.py): with REGENESIS_FULL_SUITE=1 a run that would leave tests out is
refused before anything runs, so a narrowed run cannot pass for the whole suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("args", "addopts", "named"), [
    (["-m", "not slow"], "", "-m"),
    (["-k", "store"], "", "-k"),
    (["--deselect", "tests/test_store.py::test_x"], "", "--deselect"),
    (["tests/test_store.py"], "", "test paths"),
    ([], "-m gpu", "PYTEST_ADDOPTS"),
])
def test_a_narrowed_run_is_refused_in_full_suite_mode(args, addopts, named):
    env = {**os.environ, "REGENESIS_FULL_SUITE": "1", "PYTEST_ADDOPTS": addopts}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out[-2000:]
    assert "REGENESIS_FULL_SUITE=1 runs every test" in out and named in out, out[-2000:]


def test_the_same_narrowed_run_is_allowed_without_it():
    env = {k: v for k, v in os.environ.items() if k not in ("REGENESIS_FULL_SUITE", "PYTEST_ADDOPTS")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "tests/test_suite_policy.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "6 tests collected" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]

"""The GPU check's logic that runs anywhere: it refuses up front on a machine without what it needs (this one
has no GPU), and its summary reads test verdicts, figures and memory samples correctly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_reads_verdicts_figures_and_memory(tmp_path):
    (tmp_path / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_gpu" name="test_a"/>'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c[qlora]"><skipped message="no bitsandbytes"/></testcase>'
        "</testsuite></testsuites>")
    (tmp_path / "figures.jsonl").write_text(json.dumps({"check": "engine lifecycle", "wake_s": 0.4}) + "\n")
    (tmp_path / "gpu_memory.csv").write_text("2026/12/01 10:00:00.000, 1024, 143771\n"
                                             "2026/12/01 10:00:00.500, 61440, 143771\n"
                                             "2026/12/01 10:00:01.000, 20")  # cut by the sampler's kill
    (tmp_path / "missing.txt").write_text("bitsandbytes: the QLoRA fit is skipped\n")
    summary = _summary_module().summarize(tmp_path)
    assert summary["checks"] == {"tests.test_gpu::test_a": "passed", "tests.test_gpu::test_b": "failed",
                                 "tests.test_gpu::test_c[qlora]": "skipped: no bitsandbytes"}
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (1, 1, 1)
    assert summary["gpu_memory"] == {"peak_gib": 60.0, "first_gib": 1.0, "total_gib": 140.4, "samples": 2}
    assert summary["figures"][0]["wake_s"] == 0.4 and summary["missing"] == ["bitsandbytes: the QLoRA fit is skipped"]
    assert json.loads((tmp_path / "results.json").read_text()) == summary


def test_check_says_up_front_what_this_machine_lacks(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OUT": str(tmp_path)}, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gpu_check: missing a CUDA GPU" in proc.stdout and "nothing was checked" in proc.stderr
    assert "a CUDA GPU" in (tmp_path / "missing.txt").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["passed"] == 0

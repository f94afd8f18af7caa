"""The GPU check's logic that runs anywhere: it refuses up front on a machine without what it needs (this one
has no GPU), its summary reads test verdicts, figures and memory samples correctly, the kit it carries to a
bare GPU machine fits the carry limit, and the random-weight model it builds there runs the loop (on CPU here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
                          env={**os.environ, "OUT": str(tmp_path), "GPU_KIT": str(tmp_path / "no_kit"),
                               "PYTHON": sys.executable}, timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gpu_check: missing a CUDA GPU" in proc.stdout and "nothing was checked" in proc.stderr
    assert "a CUDA GPU" in (tmp_path / "missing.txt").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["passed"] == 0


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kit_holds_the_tokenizer_and_data_and_refuses_what_is_missing(tmp_path):
    kit = _script("gpu_kit")
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{{ messages }}")
    home = tmp_path / "home"
    with pytest.raises(SystemExit, match="is not prepared; run `regenesis prepare data bigbench"):
        kit.build_kit(tmp_path / "kit", home, model, download=False)
    task = home / "data" / kit.DATA_TASKS[0]
    task.mkdir(parents=True)
    for name in ("train.jsonl", "test.jsonl", "provenance.json"):
        (task / name).write_text("{}\n")
    manifest = kit.build_kit(tmp_path / "kit", home, model, download=False)
    assert manifest["tokenizer"] == ["chat_template.jinja", "tokenizer.json"] and manifest["mib"] < kit.LIMIT_MIB
    assert (tmp_path / "kit" / "home" / "data" / kit.DATA_TASKS[0] / "provenance.json").is_file()
    assert all(spec.count("==") == 1 for spec in kit.pinned())  # the versions installed here travel
    kit.LIMIT_MIB = -1  # any kit is too large
    with pytest.raises(SystemExit, match="more than the -1 MiB a carry takes"):
        kit.build_kit(tmp_path / "kit", home, model, download=False)


@pytest.mark.slow
def test_the_random_weight_model_runs_the_loop(tmp_path):
    """What the GPU check runs on a bare GPU machine, run here on CPU: a 4-layer random-weight model built around
    the embedded tokenizer, GT-SFT data, LoRA training, the adapter pushed to the transformers engine and
    evaluated. Its answers are noise; the loop's mechanics are what is checked."""
    from regenesis_pl.embedded_model import prepare_embedded_model

    tiny = _script("gpu_models").tiny_model(tmp_path / "tiny", prepare_embedded_model())
    run = tmp_path / "run"
    command = [sys.executable, "-m", "regenesis_pl.cli", "fit", "--config", str(ROOT / "configs" / "base_cpu.yaml"),
               "--config", str(ROOT / "configs" / "gt_cpu.yaml"),
               f"--data.run_dir={run}", f"--model.base_model={tiny}", "--generation.engine.backend=transformers",
               "--data.train_task={name: arithmetic, split: train, limit: 8}",
               "--evaluation.in_domain=[{name: arithmetic, split: test, limit: 6}]", "--evaluation.ood=[]",
               "--evaluation.max_tokens=32", "--evaluation.write_report=false", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    evaluation = json.loads((run / "eval" / "round-0.json").read_text())
    assert evaluation["adapter"] and evaluation["per_task"]["arithmetic/2_digit_addition"]["n"] == 6

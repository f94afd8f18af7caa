"""Run a study's fits one after another, each as its own ``regenesis fit`` process, and resume after a kill.

Each arm x seed is an ordinary fit command with its own run directory and configuration file, so the study
adds no second way to train: a researcher can rerun any one of them by hand. A child process is used (not an
in-process fit) so every fit starts from a clean interpreter and frees its engine's memory when it ends.

The child leads a process group of its own (its engine processes and ranks join it) and ties itself to the
study process (``die_with_parent``): when the study dies, however it dies, Linux sends the child SIGTERM and
the child kills its whole group, so no fit, vLLM engine core or rank outlives the study and keeps writing
into a run directory that the resumed study is about to use.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from regenesis_pl.atomic import read_json, write_json, write_text
from regenesis_pl.hashing import config_differences, config_hash
from regenesis_pl.layout import RunLayout, make_dir

log = logging.getLogger(__name__)
HEARTBEAT_S = 15.0  # how often a running fit's wall time is saved (a killed attempt still counts)
PARENT_ENV = "REGENESIS_STUDY_PARENT"
PR_SET_PDEATHSIG = 1


class StudyRunFailed(RuntimeError):
    """A fit or the base evaluation of a study exited with an error (its log names the cause)."""


def _end_group(signum=None, frame=None) -> None:
    """Kill this process's group: itself, its engine processes, its ranks."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


def die_with_parent() -> None:
    """Called first thing by every ``regenesis`` process (a no-op unless the study started it): when the study
    process dies, end this process and everything in its process group.

    Linux delivers SIGTERM on the parent's death (``PR_SET_PDEATHSIG``) and the handler kills the group; the
    check after the request covers a study that died before it was in place. Done in the child itself, not in
    a ``preexec_fn``, which is unsafe in a threaded parent. Elsewhere than Linux nothing is set up."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or os.getpgrp() != os.getpid():  # only a group leader may end its group
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    signal.signal(signal.SIGTERM, _end_group)  # Lightning keeps a handler it finds and calls it too
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the study died before the request was in place
        _end_group()


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
    layout = RunLayout(run_dir)
    if not layout.study_marker.is_file():
        return None
    done = read_json(layout.study_marker, "study marker")
    if done.get("config_hash") != config_hash(config):
        before = yaml.safe_load(layout.study_config.read_text(encoding="utf-8")) if layout.study_config.is_file() else {}
        changed = config_differences(before, config) or ["(its saved configuration is missing)"]
        raise ValueError(f"study: {run_dir} finished with other settings ({', '.join(changed[:5])} changed); use a "
                         "new study_dir, restore the old settings, or delete that folder to run it again")
    return done


def run_command(argv: list[str], run_dir: Path, config: dict[str, Any], what: str,
                complete: Callable[[], str | None] | None = None) -> bool:
    """Run ``argv`` (a ``regenesis`` sub-command) for one study run unless it already finished; its output goes to
    the run's ``study.log``. ``complete`` says what is missing after a clean exit (None: nothing), and the run is
    marked finished only when nothing is. Returns True when it ran now, False when it had finished earlier.

    Raises:
        StudyRunFailed: the command exited with an error or left its results incomplete.
    """
    if finished(run_dir, config) is not None:
        log.info("study: %s: finished earlier, read back (%s)", what, run_dir)
        return False
    layout = RunLayout(run_dir)
    make_dir(run_dir, "study run directory")
    write_text(layout.study_config, yaml.safe_dump(config, sort_keys=False))
    attempts = read_json(layout.study_attempts, "study attempts") if layout.study_attempts.is_file() else []
    attempts.append({"start": time.time(), "seconds": 0.0})
    resumed = " (resuming an interrupted attempt)" if len(attempts) > 1 else ""
    log.info("study: %s: started%s; log %s", what, resumed, layout.study_log)
    start = time.perf_counter()
    with open(layout.study_log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, PARENT_ENV: str(os.getpid())})
        attempts[-1]["pid"] = proc.pid
        while True:
            attempts[-1]["seconds"] = round(time.perf_counter() - start, 1)
            write_json(layout.study_attempts, attempts)
            try:
                code = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                continue
    attempts[-1]["seconds"] = round(time.perf_counter() - start, 1)
    write_json(layout.study_attempts, attempts)
    if code != 0:
        raise StudyRunFailed(f"study: {what} failed (exit {code}): {_last_line(layout.study_log)}; full log "
                             f"{layout.study_log}; fix it and rerun the study (finished runs are kept)")
    missing = complete() if complete is not None else None
    if missing:
        raise StudyRunFailed(f"study: {what} exited cleanly but {missing}; see {layout.study_log}")
    done = {"what": what, "config_hash": config_hash(config), "attempts": len(attempts),
            "seconds": round(sum(a["seconds"] for a in attempts), 1), "finished": time.time()}
    write_json(layout.study_marker, done)
    log.info("study: %s: done in %.0f s", what, done["seconds"])
    return True


def run_fit(run_dir: Path, config: dict[str, Any], what: str) -> bool:
    """One arm x seed: ``regenesis fit`` on its saved configuration until it has finished (True: it ran now)."""
    layout = RunLayout(run_dir)
    argv = [sys.executable, "-m", "regenesis_pl.cli", "fit", "--config", str(layout.study_config),
            "--ckpt_path", "last"]

    def complete() -> str | None:
        has_round = any(k >= 0 for k in layout.round_evaluations())
        return None if has_round else f"wrote no round evaluation into {layout.eval_dir}"

    return run_command(argv, run_dir, config, what, complete)


def run_base_evaluation(run_dir: Path, options: dict[str, Any], what: str = "base model evaluation") -> bool:
    """The base model's evaluation (``regenesis evaluate``), once for the whole study (True: it ran now)."""
    layout = RunLayout(run_dir)
    argv = [sys.executable, "-m", "regenesis_pl.cli", "evaluate", "--config", str(layout.study_config)]

    def complete() -> str | None:
        records = layout.standalone_eval("_records.jsonl")
        return None if records.is_file() else f"wrote no {records}"

    return run_command(argv, run_dir, options, what, complete)

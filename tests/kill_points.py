"""Kill a running command at a chosen point of its log: the shared tool of the kill-and-resume tests; and a
process that holds a run directory, for the tests of a second job on it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def kill_at_line(command: list[str], at: Callable[[str], bool], cwd, env: dict[str, str], timeout_s: float,
                 settle_s: float = 3.0) -> str:
    """Run ``command`` in its own process group; once a line satisfies ``at`` (and ``settle_s`` more seconds
    have passed), SIGKILL the whole group (launcher, ranks, engine processes). Returns the output so far.

    Fails (AssertionError) when the command ends by itself or the point is not reached in ``timeout_s``."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, reached, deadline = [], False, time.monotonic() + timeout_s
    try:
        for line in proc.stdout:
            lines.append(line)
            if at(line):
                reached = True
                time.sleep(settle_s)
                break
            if time.monotonic() > deadline:
                break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended by itself; the assertion below shows its output
        proc.wait(timeout=60)
    output = "".join(lines)
    assert reached and proc.returncode == -signal.SIGKILL, output[-3000:]
    return output


def kill_when(command: list[str], ready: Callable[[], bool], timeout_s: float = 600, **popen) -> None:
    """Run ``command`` in its own process group and SIGKILL the group as soon as ``ready()`` (polled on disk)
    holds. Fails (AssertionError) when the command ends first or ``ready()`` never holds in ``timeout_s``."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            **popen)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None, f"the command ended before the kill: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, f"not ready for the kill after {timeout_s:.0f} s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


HOLD_RUN_DIR = ("import sys, time\nfrom regenesis_pl.run_lock import claimed\n"
                "with claimed(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def hold_run_dir(run_dir) -> subprocess.Popen:
    """A separate process (another running job) that holds ``run_dir`` until it is killed; returns once it does."""
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_RUN_DIR, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held", "the holding process did not take the run directory"
    return proc


"""One running job per run directory: an advisory lock the kernel drops when the process ends (even by SIGKILL).

The store's files and the round files assume one writer per rank. A second `regenesis fit`, `synthesize` or
`evaluate` started on a directory already in use would interleave with the first; it is refused in one line
before any engine or model is built. Only the launching process (rank 0) claims the directory: the other ranks
of the same job share it by design.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from regenesis_pl.layout import RunLayout


class RunDirInUse(BlockingIOError):
    """Another running job holds this lock (an OSError, so the commands report it in one line, exit code 2)."""


def lock_exclusive(handle, message: str) -> None:
    """Take an exclusive, non-blocking lock on an open file, or raise ``RunDirInUse(message)``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock, one job per directory by convention
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirInUse(message) from None


def claims_run_dir() -> bool:
    """Whether this process claims its run directory: yes unless a launcher made it a rank other than 0."""
    return all(os.environ.get(name, "0") in ("", "0") for name in ("RANK", "LOCAL_RANK"))


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def claimed(run_dir: str | os.PathLike, what: str = "run directory") -> Iterator[Path]:
    """Hold ``<run_dir>/.in-use`` for the body's duration (created with the directory if needed).

    Raises ``RunDirInUse`` naming the directory and the holder's process id when another job holds it."""
    layout = RunLayout(run_dir)
    layout.create()
    if not claims_run_dir():
        yield layout.root
        return
    path = layout.in_use
    with open(path, "a+", encoding="utf-8") as handle:
        lock_exclusive(handle, f"{what} {layout.root} is in use by another running job{_holder(path)}; wait for "
                               "it to finish, stop it, or give this job another run_dir")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield layout.root
        finally:
            handle.seek(0)
            handle.truncate()  # the lock goes with the handle; an empty file says nobody holds it

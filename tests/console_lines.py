"""What a run printed that is not ours: the shared reader of the console tests."""

from __future__ import annotations

import re

# One of our tqdm bars, counted in requests ("synthesis:  38%|###  | 3/8 [00:05<00:08, 1.2s/req, ...]" or
# "eval base: 0req [00:00, ?req/s]"); a library's bar (e.g. "Loading weights: ... it/s") is foreign.
_PROGRESS = re.compile(r"^[\w .\-/]+: +(\d+%\|.*(s/req|req/s)|\d+req \[)")
# A library's warning or log line: vLLM's "(EngineCore pid=1) WARNING 12-03 ...", Python's "file.py:3: FutureWarning:",
# torch's C++ "[W1203 12:59:00 ...] Warning:" and its glog-style "W1203 12:58:59 ..." lines.
LIBRARY_MESSAGE = re.compile(r"\b(WARNING|INFO|DEBUG)\b|\w+Warning\b|Warning:|^\[?[WIE]\d{4} \d\d:\d\d")


def foreign_lines(log: str) -> list[str]:
    """Every line that is neither ours (``[regenesis] ...``), nor a progress bar, nor blank."""
    lines = [part for line in log.splitlines() for part in line.split("\r")]
    return [line for line in lines if line.strip() and not line.startswith("[regenesis] ")
            and not _PROGRESS.match(line)]


def library_messages(log: str) -> list[str]:
    """The lines of ``log`` that are a library's warning or log message."""
    return [line for line in foreign_lines(log) if LIBRARY_MESSAGE.search(line)]

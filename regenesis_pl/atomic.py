"""The one way this package writes a file that something reads back later: whole or not at all.

Each writer puts the content in a temporary file beside the target, flushes and fsyncs it, then renames it
over the target (``os.replace`` is atomic on POSIX). A kill at any moment leaves the old file or the new
one, never half of one; a reader never sees a partial summary, marker or record list.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with ``write(tmp)``, a function that writes a whole file at the temporary path
    it is given (for writers that take a file name, such as ``safetensors.torch.save_file``). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # unique per writer
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_leftovers(path: str | os.PathLike) -> int:
    """Delete the temporary files killed writers of ``path`` left beside it (a SIGKILL skips their clean-up);
    returns how many. Call it only where no other process may be writing ``path`` at the same time."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created). Returns the path."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """Write one JSON document atomically (non-ASCII kept as is)."""
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write JSON lines atomically: one compact JSON document per record."""
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file written by ``write_json``; a corrupt one is a one-line ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); delete it to have it written again") from None


def read_jsonl(path: str | os.PathLike, what: str = "file",
               fix: str = "delete it to have it written again") -> Iterator[tuple[int, Any]]:
    """Each JSON line of a file written by ``write_jsonl`` with its line number (blank lines skipped); a line
    that is not JSON is a one-line ``ValueError`` naming the file and line and saying ``fix``."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{what} {path}:{number}: not JSON ({err}); {fix}") from None
            yield number, value

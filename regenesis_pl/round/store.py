"""The on-disk generation store: every completion is written once, so any interrupted run resumes.

Each request is keyed by what determines its output (``request_key``): the served weights
(``engine.weights_id``: base model + adapter), the exact rendered prompt text, the sampling settings (without
the base seed) and the request's own seed. Records live in ``generations*.jsonl`` files (one per writing
process), appended, flushed and fsynced one finished request at a time. ``data.cached_engine.CachedEngine``
is the engine that answers from a store and generates only what is missing.

Run directories carry a ``meta.json`` (method, round, model, weights, guideline set, config).
``prepare_store_dir`` gives each distinct meta its own sub-store, so a run directory reused with other
settings says so in one line and reuses nothing written under the old settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from regenesis_pl.atomic import write_json
from regenesis_pl.engines.base import (
    Completion,
    RequestOutput,
    SamplingConfig,
)
from regenesis_pl.hashing import config_differences, digest
from regenesis_pl.layout import make_dir
from regenesis_pl.run_lock import lock_exclusive

log = logging.getLogger(__name__)

STORE_FILE = "generations.jsonl"
META_FILE = "meta.json"
FORMAT_VERSION = 2  # bump when the key or record layout changes: old stores then simply miss


def request_key(weights_id: str, prompt: str, sampling: SamplingConfig, seed: int) -> str:
    """The store key of one request: sha256 over weights, prompt text, settings (seed excluded) and seed."""
    settings = dataclasses.replace(sampling, seed=0).key()
    return digest([FORMAT_VERSION, weights_id, settings, int(seed), prompt], length=64)


def _output_to_json(out: RequestOutput) -> dict[str, Any]:
    extra = {k: v for k, v in out.extra.items() if k != "cached"}
    try:
        json.dumps(extra)
    except TypeError:  # engine-specific objects cannot be stored; keep the plain parts
        extra = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {
        "completions": [dataclasses.asdict(c) for c in out.completions],
        "prompt_tokens": out.prompt_tokens,
        "extra": extra,
    }


def _output_from_json(rec: dict[str, Any]) -> RequestOutput:
    if not isinstance(rec.get("completions"), list) or not rec["completions"]:
        raise ValueError("no completions list")
    return RequestOutput(
        completions=[Completion(**c) for c in rec["completions"]],
        prompt_tokens=rec.get("prompt_tokens", 0),
        extra={**rec.get("extra", {}), "cached": True},
    )


class GenerationStore:
    """Append-only JSONL files of request outputs with an in-memory index ``key -> (file, offset, length)``.

    Each process writes its own file: ``generations.jsonl`` for a single process, ``generations.rank-<r>.jsonl``
    for rank r of a sharded run (``shard``). Every ``generations*.jsonl`` in the folder is indexed, so a run
    resumed with another number of processes still finds everything any rank stored. The own file is held
    under an exclusive advisory lock (POSIX): a second writer for the same shard fails with a clear error
    instead of interleaving lines; ``close()`` (or the end of the process, even by SIGKILL) releases it.

    Args:
        store_dir: Directory holding the generation files (created when missing).
        shard: This writer's shard name ("" for a single process, ``rank-<r>`` for rank r).
    """

    def __init__(self, store_dir: str | os.PathLike, shard: str = "") -> None:
        self.dir = Path(store_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / (STORE_FILE if not shard else STORE_FILE.replace(".jsonl", f".{shard}.jsonl"))
        self._index: dict[str, tuple[Path, int, int]] = {}
        self.skipped_lines = 0  # torn or unreadable lines met on load (each warned about)
        self._writer = open(self.path, "ab")  # noqa: SIM115 - kept open for the store's lifetime
        self._readers: dict[Path, Any] = {}
        try:
            lock_exclusive(self._writer, f"store {self.path} is in use by another running job (or another open "
                                         "store in this process); wait for it to finish or use another run directory")
            self._size = self._load(self.path, own=True)
            for other in sorted(self.dir.glob("generations*.jsonl")):
                if other != self.path:
                    self._load(other, own=False)
        except BaseException:
            self._writer.close()
            raise

    def _load(self, path: Path, own: bool) -> int:
        """Index one file. A torn last line (a kill mid-write) is cut from the own file so appends start clean,
        and ignored in another rank's file (that rank may still be writing it). Returns the indexed size."""
        data = path.read_bytes()
        tail = data.rfind(b"\n") + 1  # bytes after the last line end belong to a torn line
        if tail < len(data) and own:
            self.skipped_lines += 1
            log.warning("store %s: skipping a torn last line (%d bytes, no line end); its request will be "
                        "generated again", path, len(data) - tail)
            with open(path, "r+b") as f:
                f.truncate(tail)
        offset = 0
        for number, line in enumerate(data[:tail].split(b"\n")[:-1], start=1):
            try:
                rec = json.loads(line)
                key = rec["key"]
                _output_from_json(rec)  # a line with a key but unusable completions is skipped here, not in get()
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                self.skipped_lines += 1
                log.warning("store %s: skipping unreadable line %d (%s); its request will be generated "
                            "again", path, number, str(err)[:80])
            else:
                self._index[key] = (path, offset, len(line) + 1)
            offset += len(line) + 1
        return tail

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, key: str) -> RequestOutput | None:
        """The stored output for ``key``, or None."""
        loc = self._index.get(key)
        if loc is None:
            return None
        path, offset, length = loc
        reader = self._readers.get(path)
        if reader is None:
            reader = self._readers[path] = open(path, "rb")  # noqa: SIM115 - closed in close()
        reader.seek(offset)
        rec = json.loads(reader.read(length))
        if rec.get("key") != key:
            raise RuntimeError(f"store {path} changed under this process (another writer?); "
                               "use one run directory per running job")
        return _output_from_json(rec)

    def append(self, items: Sequence[tuple[str, RequestOutput, dict[str, Any]]]) -> None:
        """Append ``(key, output, info)`` records, then flush and fsync (durable before returning)."""
        chunks, offset = [], self._size
        for key, out, info in items:
            line = (json.dumps({"key": key, **info, **_output_to_json(out)}, ensure_ascii=False) + "\n")
            encoded = line.encode("utf-8")
            self._index[key] = (self.path, offset, len(encoded))
            chunks.append(encoded)
            offset += len(encoded)
        try:
            self._writer.write(b"".join(chunks))
            self._writer.flush()
            os.fsync(self._writer.fileno())
        except OSError as err:  # disk full, quota, a vanished mount: say where, and that nothing stored is lost
            for key, _, _ in items:
                self._index.pop(key, None)
            raise OSError(err.errno, f"store {self.path}: cannot write ({err.strerror}); free space or fix the "
                                     "disk and rerun the same command: what was stored before is kept") from None
        self._size = offset

    def close(self) -> None:
        for f in (self._writer, *self._readers.values()):
            if not f.closed:
                f.close()


# -- run directories ------------------------------------------------------------------------------------
def _describe(meta: dict[str, Any]) -> str:
    keys = ("method", "round", "model", "adapter")
    return " ".join(f"{k}={meta.get(k)}" for k in keys if k in meta)


def prepare_store_dir(run_dir: str | os.PathLike, meta: dict[str, Any],
                      say: Callable[[str], None] = print) -> Path:
    """The store directory for a run with this meta, under ``run_dir`` (``store-<meta hash>``).

    Writes ``run_dir/meta.json``. When it already held a different meta, says so in one line: generations
    made under other settings are never reused (they live on in their own sub-store).

    Args:
        run_dir: The run directory (created when missing).
        meta: JSON-serialisable description: method, round, model, weights fingerprint, guideline set, config.
        say: Where the one-line notice goes.
    """
    run_dir = make_dir(run_dir)
    meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
    meta_hash = digest(meta, 12)
    meta_path = run_dir / META_FILE
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {"unreadable": str(meta_path)}
        if digest(old, 12) != meta_hash:
            changed = ", ".join(config_differences(old, meta)[:6]) or "?"
            say(f"store at {run_dir} was written by {_describe(old)} (differs in: {changed}); "
                f"reusing nothing from it: new generations go to store-{meta_hash}")
    store_dir = run_dir / f"store-{meta_hash}"
    store_dir.mkdir(exist_ok=True)
    for path in (meta_path, store_dir / META_FILE):
        write_json(path, meta)
    return store_dir

"""Which part of the work this process does, and how it waits for the other processes' parts.

With N processes every rank generates: rank r takes questions ``r, r + N, r + 2N, ...`` of the round's (or
the evaluation's) question list, writes its results to its own files, and the merge orders everything by
question id, so the result equals a one-process run with the same seeds (request seeds come from question
identity, never from a batch position or a rank).

Waiting for the other ranks' files is done by polling the file system, not inside a collective: a round of
generation can take hours, far past a process group's timeout, and polling works the same across nodes
whose run directory is on shared storage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from regenesis_pl.layout import shard_name

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WAIT_MINUTES = 24 * 60.0  # a paper-size round on one GPU per rank can take hours


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` processes; ``group_size`` processes share one engine (tensor parallel).

    With ``group_size`` g > 1 the first rank of each group of g runs the engine and generates the group's
    share; the others write empty parts (they still name their files, so the waits stay uniform).
    """

    rank: int = 0
    world: int = 1
    group_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard: rank {self.rank} is outside a world of {self.world} processes")
        if self.group_size < 1 or self.world % self.group_size:
            raise ValueError(f"shard: {self.world} processes do not split into engine groups of {self.group_size}; "
                             "make the number of processes a multiple of engine.tensor_parallel_size")

    @property
    def has_engine(self) -> bool:
        """Whether this rank runs an engine (the first rank of its group)."""
        return self.rank % self.group_size == 0

    @property
    def name(self) -> str:
        """File-name suffix of this rank's files ("" for a single process)."""
        return shard_name(self.rank, self.world)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's items: with E = world / group_size engines, every E-th item starting at this rank's
        engine index (balanced, order kept); nothing for a rank without an engine."""
        if not self.has_engine:
            return []
        return list(items[self.rank // self.group_size::self.world // self.group_size])


def process_shard() -> Shard:
    """This process's shard: the initialized torch.distributed group, else the launcher's ``RANK`` and
    ``WORLD_SIZE`` (torchrun, Lightning's launchers), else a single process."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return Shard(dist.get_rank(), dist.get_world_size())
    except ImportError:  # torch is a dependency; this only keeps the function usable without it
        pass
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    return Shard(rank, world) if world > 1 else Shard()


FAILED_SLACK_S = 60.0  # a failure marker this much older than the start of the work is an earlier run's


def mark_failed(failures: Path, rank: int, err: BaseException) -> None:
    """Leave ``<failures>/rank-<r>`` saying why this rank stopped, so the others stop waiting for it."""
    from regenesis_pl.atomic import write_text

    try:
        write_text(Path(failures) / f"rank-{rank}", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n")
    except OSError:
        pass  # the original error matters more than the marker


def clear_failed(failures: Path, rank: int) -> None:
    """Remove this rank's marker of an earlier failure (at the start of new work)."""
    (Path(failures) / f"rank-{rank}").unlink(missing_ok=True)


def _failure(failures: Path | None, since: float | None) -> str | None:
    if failures is None or not Path(failures).is_dir():
        return None
    for marker in sorted(Path(failures).glob("rank-*")):
        try:
            if since is None or marker.stat().st_mtime >= since - FAILED_SLACK_S:
                return f"{marker.name} failed ({marker.read_text().strip()})"
        except OSError:
            continue
    return None


def wait_for_files(paths: Sequence[Path], what: str, timeout_minutes: float = DEFAULT_WAIT_MINUTES,
                   poll_s: float = 1.0, say: Callable[[str], None] | None = None, failures: Path | None = None,
                   since: float | None = None) -> None:
    """Return once every path exists; poll every ``poll_s`` seconds, saying what it waits for every minute.

    Args:
        failures: Folder of failure markers (``mark_failed``): a marker written since ``since`` (wall-clock
            seconds, the start of this work) ends the wait at once with that rank's reason.

    Raises:
        TimeoutError: after ``timeout_minutes``, naming the files still missing and how to raise the limit.
        RuntimeError: another rank left a failure marker.
    """
    deadline = time.monotonic() + 60 * timeout_minutes
    next_note = time.monotonic() + 60
    while True:
        missing = [p for p in paths if not Path(p).exists()]
        if not missing:
            return
        failed = _failure(failures, since)
        if failed is not None:
            raise RuntimeError(f"{what}: {failed}; stopping this rank too (its log has the cause)")
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"{what}: waited {timeout_minutes:g} min for {len(missing)} file(s), e.g. {missing[0]}; "
                               "another rank failed or is slower: check its log, or raise round_driver.shard_timeout_minutes")
        if say is not None and now > next_note:
            say(f"{what}: waiting for {len(missing)} other rank(s) ({', '.join(p.name for p in missing[:4])})")
            next_note = now + 60
        time.sleep(poll_s)


@dataclass(frozen=True)
class ShardedJob:
    """One job split over the ranks, the way synthesis rounds and evaluations run: every rank does its share
    and writes it to ``part(rank)``, rank 0 waits for every part and merges them, the others wait for the merge.

    Args:
        shard: This process's share.
        part: Where rank r writes its part (JSON).
        what: What the job is, for the waits' notices and errors ("round 0 synthesis", "eval base").
        failures: Folder of failure markers: a rank that fails leaves one, so the others stop waiting for it.
        wait_minutes: How long a rank waits for the others' files.
        done: A file the merge writes last; the other ranks wait for it (None: for every part).
        say: Where the waits' notices go (one a minute).
    """

    shard: Shard
    part: Callable[[int], Path]
    what: str
    failures: Path | None = None
    wait_minutes: float = DEFAULT_WAIT_MINUTES
    done: Path | None = None
    say: Callable[[str], None] | None = None

    def run(self, items: Sequence[T], work: Callable[[list[T]], object], merge: Callable[[list], R],
            since: float | None = None) -> R | None:
        """``merge`` over every rank's ``work(its share of items)``; rank 0 returns it, the others None.

        ``work`` returns its part as JSON data; ``merge`` gets the parts in rank order exactly as they read back
        from disk. A single process writes no files: its part goes through JSON in memory. ``since`` is when
        this work began (wall-clock seconds; default now): failure markers older than that are an earlier run's.
        """
        import json

        from regenesis_pl.atomic import read_json, write_json

        if self.shard.world == 1:
            return merge([json.loads(json.dumps(work(list(items))))])
        since = time.time() if since is None else since
        shard, paths = self.shard, [self.part(r) for r in range(self.shard.world)]
        if self.failures is not None:
            clear_failed(self.failures, shard.rank)
        try:
            write_json(paths[shard.rank], work(shard.take(items)))
            wait = {"timeout_minutes": self.wait_minutes, "say": self.say, "failures": self.failures, "since": since}
            if shard.is_first:
                wait_for_files(paths, self.what, **wait)
                return merge([read_json(p, f"{self.what} part") for p in paths])
            wait_for_files([self.done] if self.done is not None else paths, f"{self.what} merge", **wait)
            return None
        except Exception as err:
            if self.failures is not None:
                mark_failed(self.failures, shard.rank, err)
            raise


def local_device() -> str | None:
    """This process's GPU under a launcher ("cuda:<LOCAL_RANK>"), or None off CUDA (the engine's default)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"

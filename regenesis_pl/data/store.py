"""The on-disk generation store: every completion is written once, so any interrupted run resumes.

``CachedEngine`` wraps any ``Engine``. Each request is keyed by what determines its output: the served
weights (``engine.weights_id``: base model + adapter), the exact rendered prompt text, the sampling
settings (without the base seed) and the request's own seed. Hits are read back from the store's
``generations*.jsonl`` files (one per writing process). Misses go to the engine together (one call, or calls of
at most ``flush_every`` requests), and each one is appended, flushed and fsynced the moment the engine finishes
it (``on_finished``), so a kill loses only the requests still running and no request waits for a slower one
to be saved. A stage function that calls ``engine.generate`` becomes resumable without knowing.

Run directories carry a ``meta.json`` (method, round, model, weights, guideline set, config).
``prepare_store_dir`` gives each distinct meta its own sub-store, so a run directory reused with other
settings says so in one line and reuses nothing written under the old settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from regenesis_pl.atomic import write_json
from regenesis_pl.chat import render_prompt
from regenesis_pl.engines.base import Completion, Conversation, Engine, RequestOutput, SamplingConfig
from regenesis_pl.hashing import config_differences, digest, resolve_request_seeds
from regenesis_pl.layout import make_dir

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
            _lock(self._writer, self.path)
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


def _lock(handle, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock, single writer by convention
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"store {path} is in use by another running job (or another open store in this "
                           "process); wait for it to finish or use another run directory") from None


class CachedEngine:
    """An ``Engine`` that answers from a ``GenerationStore`` and generates (and stores) only what is missing.

    Args:
        engine: The engine doing the real generation.
        store_dir: Store directory (``generations.jsonl`` inside).
        flush_every: At most this many requests per engine call; None: all missing requests in one call.
            Completions are stored as they finish either way.
        shard: This process's shard name (see ``GenerationStore``); "" for a single process.
    """

    def __init__(self, engine: Engine, store_dir: str | os.PathLike, flush_every: int | None = None,
                 shard: str = "") -> None:
        if flush_every is not None and flush_every < 1:
            raise ValueError(f"CachedEngine: flush_every={flush_every} must be >= 1 (or None: one call)")
        self.engine = engine
        self.store = GenerationStore(store_dir, shard)
        self.flush_every = flush_every
        self.name = f"cached({engine.name})"
        self.hits = 0            # requests answered from the store
        self.misses = 0          # requests generated (and stored) by this instance
        self.generated_tokens = 0
        self.cached_tokens = 0
        self.generate_seconds = 0.0
        self._prefix_start = dict(getattr(engine, "prefix_cache", None) or {})

    # -- Engine protocol: delegation -------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def weights_id(self) -> str:
        return self.engine.weights_id

    def set_adapter(self, adapter_dir: str | None) -> None:
        self.engine.set_adapter(adapter_dir)

    def load_weights(self, model_dir: str, weights_id: str | None = None) -> None:
        self.engine.load_weights(model_dir, weights_id)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def close(self) -> None:
        self.store.close()
        self.engine.close()

    def stats(self) -> dict[str, Any]:
        """Counters for summaries: hits, misses, stored records, skipped lines, generated tokens, time."""
        return {
            "store": str(self.store.path),
            "hits": self.hits,
            "misses": self.misses,
            "stored": len(self.store),
            "skipped_lines": self.store.skipped_lines,
            "generated_tokens": self.generated_tokens,
            "cached_tokens": self.cached_tokens,
            "generate_seconds": round(self.generate_seconds, 3),
            **self._prefix_counts(),
        }

    def _prefix_counts(self) -> dict[str, int]:
        """Prompt tokens sent to the engine by this instance and how many its prefix cache served (vLLM)."""
        now = getattr(self.engine, "prefix_cache", None)
        if not now:
            return {}
        return {f"prefix_{k}": now[k] - self._prefix_start.get(k, 0) for k in ("prompt_tokens", "cached_tokens")}

    # -- generation ------------------------------------------------------------------------------------
    def generate(
        self,
        conversations: Sequence[Conversation],
        sampling: SamplingConfig,
        request_seeds: Sequence[int] | None = None,
        progress: str | None = None,
    ) -> list[RequestOutput]:
        """Like ``Engine.generate``; requests already in the store are not generated again."""
        request_seeds = resolve_request_seeds(len(conversations), sampling.seed, request_seeds)
        weights = self.engine.weights_id
        keys = [request_key(weights, render_prompt(self.tokenizer, conv), sampling, seed)
                for conv, seed in zip(conversations, request_seeds)]
        todo: dict[str, int] = {}  # missing key -> first request index (duplicates are generated once)
        for i, key in enumerate(keys):
            if key not in self.store and key not in todo:
                todo[key] = i
        fresh: dict[str, RequestOutput] = {}
        bar = _StageBar(progress, total=len(keys), done=len(keys) - len(todo))
        info = {"weights_id": weights, "sampling": sampling.key(), "label": progress or ""}
        pending = list(todo.items())
        step = self.flush_every or max(1, len(pending))
        try:
            for start in range(0, len(pending), step):
                batch = pending[start:start + step]

                def store(finished: list[tuple[int, RequestOutput]], batch=batch) -> None:
                    items = [(batch[j][0], out, {**info, "seed": int(request_seeds[batch[j][1]])}) for j, out in finished]
                    self.store.append(items)  # durable before the engine steps on
                    fresh.update((key, out) for key, out, _ in items)
                    tokens = sum(c.num_tokens for _, out in finished for c in out.completions)
                    self.misses += len(finished)
                    self.generated_tokens += tokens
                    bar.advance(len(finished), len(finished) * sampling.n, tokens)

                t0 = time.perf_counter()
                outs = self.engine.generate([conversations[i] for _, i in batch], sampling,
                                            request_seeds=[request_seeds[i] for _, i in batch], progress=None,
                                            on_finished=store)
                self.generate_seconds += time.perf_counter() - t0
                if len(outs) != len(batch):
                    raise RuntimeError(f"engine {self.engine.name} returned {len(outs)} outputs for "
                                       f"{len(batch)} requests")
                unreported = [(j, out) for j, out in enumerate(outs) if batch[j][0] not in fresh]
                if unreported:  # an engine that reports nothing (or not everything) as it goes
                    store(unreported)
        finally:
            bar.close()
        results = []
        for i, key in enumerate(keys):
            if key in fresh and todo[key] == i:
                results.append(fresh[key])
                continue
            out = fresh.get(key) or self.store.get(key)
            self.hits += 1
            self.cached_tokens += sum(c.num_tokens for c in out.completions)
            results.append(out)
        return results


class _StageBar:
    """A tqdm bar per stage with generated paths/s and tokens/s in its postfix (silent when no label)."""

    def __init__(self, label: str | None, total: int, done: int) -> None:
        self._bar = None
        self._start = time.perf_counter()
        self._paths = self._tokens = 0
        if label:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=done, desc=label, unit="req", dynamic_ncols=True)
            if done:
                self._bar.set_postfix_str(f"{done} from store")

    def advance(self, requests: int, paths: int, tokens: int) -> None:
        self._paths += paths
        self._tokens += tokens
        if self._bar is not None:
            secs = max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{self._paths / secs:.2f} paths/s, {self._tokens / secs:.1f} tok/s")
            self._bar.update(requests)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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

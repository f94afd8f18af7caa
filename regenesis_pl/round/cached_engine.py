"""An engine that answers from a generation store (``data.store``) and generates only what is missing.

``CachedEngine`` wraps any ``Engine``. Requests found in the store are answered from it; the others go to the
engine together (one call or stream, or calls of at most ``flush_every`` requests), and each one is appended,
flushed and fsynced the moment the engine finishes it, so a kill loses only the requests still running and no
request waits for a slower one to be saved. A stage function that calls ``engine.generate``, or a flow run in a
stream (``method.flows``), becomes resumable without knowing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from regenesis_pl.chat import render_prompt
from regenesis_pl.engines.base import Conversation, Engine, FollowUp, Request, RequestOutput, SamplingConfig
from regenesis_pl.engines.streaming import collect, stream
from regenesis_pl.hashing import resolve_request_seeds
from regenesis_pl.round.store import GenerationStore, request_key


@contextmanager
def through_store(engine: Engine | None, store_dir: str | os.PathLike, flush_every: int | None = None,
                  shard: str = "") -> Iterator[CachedEngine | None]:
    """``engine`` answering through the store in ``store_dir`` (this rank's file) for the block: the store is
    closed after it, the engine stays open (its owner closes it). None for a rank without an engine."""
    if engine is None:
        yield None
        return
    cached = CachedEngine(engine, store_dir, flush_every=flush_every, shard=shard)
    try:
        yield cached
    finally:
        cached.store.close()


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
        """Like ``Engine.generate``; requests already in the store are not generated again. With ``flush_every``,
        the missing requests go to the engine in streams of at most that many."""
        seeds = resolve_request_seeds(len(conversations), sampling.seed, request_seeds)
        requests = [Request(c, sampling, seed, progress or "") for c, seed in zip(conversations, seeds)]
        parts = [list(range(len(requests)))]
        if self.flush_every is not None:  # stored ones first (no engine call), then the missing ones in parts
            weights = self.engine.weights_id
            stored = [i for i, r in enumerate(requests) if self._key(weights, r) in self.store]
            missing = sorted(set(range(len(requests))) - set(stored))
            parts = [stored] + [missing[k:k + self.flush_every] for k in range(0, len(missing), self.flush_every)]
        results: list[RequestOutput | None] = [None] * len(requests)
        bar = _StageBar(progress)
        try:
            for part in parts:
                outs = collect(lambda batch, follow_up: self._stream(batch, follow_up, bar), [requests[i] for i in part])
                for i, out in zip(part, outs):
                    results[i] = out
        finally:
            bar.close()
        return results

    def _key(self, weights: str, request: Request) -> str:
        return request_key(weights, render_prompt(self.tokenizer, request.conversation), request.sampling, request.seed)

    def stream(self, requests: Sequence[Request], follow_up: FollowUp, progress: str | None = None) -> int:
        """``engines.streaming.stream`` through the store: a stored request is answered at once (and its follow-ups
        asked for); the others run in the wrapped engine's stream, each stored the moment it finishes, before its
        follow-ups are asked for. A request repeated while its twin runs is generated once."""
        bar = _StageBar(progress)
        try:
            return self._stream(requests, follow_up, bar)
        finally:
            bar.close()

    def _stream(self, requests: Sequence[Request], follow_up: FollowUp, bar: _StageBar) -> int:
        weights = self.engine.weights_id
        waiting: dict[str, list[int]] = {}  # key of a request in the engine -> our numbers waiting for it
        sent: list[tuple[str, dict[str, Any]]] = []  # the engine's number -> (key, what the store records)
        count = 0

        def admit(batch: Sequence[Request]) -> list[Request]:
            """Number the requests, answer those in the store (and, in turn, their follow-ups); return the rest."""
            nonlocal count
            misses, queue = [], list(batch)
            while queue:
                hits = []
                for request in queue:
                    index, count = count, count + 1
                    key = self._key(weights, request)
                    stored = None if key in waiting else self.store.get(key)
                    if stored is not None:
                        hits.append((index, stored))
                        self.hits += 1
                        self.cached_tokens += sum(c.num_tokens for c in stored.completions)
                    elif key in waiting:
                        waiting[key].append(index)
                    else:
                        waiting[key] = [index]
                        sent.append((key, {"weights_id": weights, "sampling": request.sampling.key(),
                                           "label": request.label, "seed": int(request.seed)}))
                        misses.append(request)
                bar.add(len(queue), from_store=len(hits))
                queue = list(follow_up(hits)) if hits else []
            return misses

        def finished(items: list[tuple[int, RequestOutput]]) -> list[Request]:
            records = [(sent[i][0], out, sent[i][1]) for i, out in items]
            self.store.append(records)  # durable before anything builds on it
            tokens = sum(c.num_tokens for _, out in items for c in out.completions)
            self.misses += len(items)
            self.generated_tokens += tokens
            answered = [(index, out) for (key, out, _) in records for index in waiting.pop(key)]
            self.hits += len(answered) - len(items)  # a twin counts as answered from the store, as it now is
            self.cached_tokens += sum(c.num_tokens for index, out in answered for c in out.completions) - tokens
            bar.advance(len(answered), tokens)
            return admit(follow_up(answered))

        misses = admit(requests)
        if misses:
            t0 = time.perf_counter()
            try:
                stream(self.engine, misses, finished)
            finally:
                self.generate_seconds += time.perf_counter() - t0
        if waiting:
            raise RuntimeError(f"engine {self.engine.name} finished without {len(waiting)} requests")
        return count


class _StageBar:
    """A tqdm bar per stage or stream with the generated tokens/s in its postfix (silent when no label); its total
    grows as a stream adds requests."""

    def __init__(self, label: str | None) -> None:
        self._bar = None
        self._start = time.perf_counter()
        self._tokens = self._stored = 0
        if label:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=0, desc=label, unit="req", dynamic_ncols=True)

    def add(self, requests: int, from_store: int) -> None:
        """``requests`` more to do, ``from_store`` of them answered by the store already."""
        self._stored += from_store
        if self._bar is not None:
            self._bar.total += requests
            if from_store:
                self._bar.set_postfix_str(f"{self._stored} from store", refresh=False)
            self._bar.update(from_store)

    def advance(self, requests: int, tokens: int) -> None:
        self._tokens += tokens
        if self._bar is not None:
            secs = max(time.perf_counter() - self._start, 1e-9)
            stored = f", {self._stored} from store" if self._stored else ""
            self._bar.set_postfix_str(f"{self._tokens / secs:.1f} generated tok/s{stored}", refresh=False)
            self._bar.update(requests)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

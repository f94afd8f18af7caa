"""Streams of requests that grow while they run: a request's follow-up starts as soon as the request is done.

``stream(engine, requests, follow_up)`` runs ``requests``; whenever some finish, ``follow_up`` receives them
and returns new requests, which join the same stream. An engine that can take requests while it runs
(``VLLMEngine.stream``, and the store's ``CachedEngine.stream`` over it) keeps its batch full across stages:
nothing waits for the slowest request of a stage. Any other engine (the transformers engine, the scripted
engines of the unit tests) runs in waves: one ``generate`` call per (sampling, label) group of what is
pending, then the follow-ups of the wave. Each request carries its own seed, so a stream generates the same
requests as a stage-by-stage run; only the order differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from regenesis_pl.engines.base import Engine, FollowUp, Request, RequestOutput


def stream(engine: Engine, requests: Sequence[Request], follow_up: FollowUp, progress: str | None = None) -> int:
    """Run ``requests`` and every follow-up; returns how many requests ran in all.

    Requests are numbered in the order given, follow-ups continuing after the last number handed out, and
    ``follow_up`` gets ``(number, output)`` of each request exactly once.

    Args:
        engine: Any engine; one with a ``stream`` method of this signature runs the stream itself.
        requests: The first requests.
        follow_up: Called with finished requests; returns the requests to add (possibly none).
        progress: Label of a progress bar, or None for none.
    """
    own = getattr(engine, "stream", None)
    if own is not None:
        return own(requests, follow_up, progress)
    return run_in_waves(engine, requests, follow_up, progress)


def run_in_waves(engine: Engine, requests: Sequence[Request], follow_up: FollowUp,
                 progress: str | None = None) -> int:
    """``stream`` for an engine that only has ``generate``: what is pending goes out in one call per
    (sampling, label) group, first-come order; the follow-ups of what finished make the next wave. Requests the
    engine reports while its call runs (``on_finished``) get their follow-ups asked for at once, so what they
    lead to is recorded before the call ends."""
    pending = list(enumerate(requests))
    total = len(pending)
    while pending:
        groups: dict[tuple, list[tuple[int, Request]]] = {}
        for item in pending:
            groups.setdefault((item[1].sampling, item[1].label), []).append(item)
        next_wave: list[tuple[int, Request]] = []
        for (sampling, label), items in groups.items():
            reported: set[int] = set()

            def report(finished, items=items, reported=reported, next_wave=next_wave) -> None:
                nonlocal total
                reported.update(k for k, _ in finished)
                more = list(follow_up([(items[k][0], out) for k, out in finished]))
                next_wave.extend((total + k, request) for k, request in enumerate(more))
                total += len(more)

            outputs = engine.generate([r.conversation for _, r in items], sampling,
                                      request_seeds=[r.seed for _, r in items],
                                      progress=f"{progress} {label}".strip() if progress else None, on_finished=report)
            if len(outputs) != len(items):
                raise RuntimeError(f"engine {getattr(engine, 'name', '?')} returned {len(outputs)} outputs for "
                                   f"{len(items)} {label or ''} requests")
            unreported = [(k, out) for k, out in enumerate(outputs) if k not in reported]
            if unreported:  # an engine that reports nothing (or not everything) as it goes
                report(unreported)
        pending = next_wave
    return total


def collect(run: Callable[[Sequence[Request], FollowUp], int], requests: Sequence[Request],
            on_finished: Callable[[list[tuple[int, RequestOutput]]], None] | None = None) -> list[RequestOutput]:
    """``generate`` on top of a stream without follow-ups: ``run(requests, follow_up)`` runs them, and the outputs
    come back in request order (``on_finished``, when given, hears of each one as it finishes)."""
    outputs: list[RequestOutput | None] = [None] * len(requests)

    def keep(finished: list[tuple[int, RequestOutput]]) -> tuple:
        for index, out in finished:
            outputs[index] = out
        if on_finished is not None:
            on_finished(finished)
        return ()

    run(requests, keep)
    return outputs

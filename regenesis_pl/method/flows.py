"""How the method's steps meet an engine: stage by stage, or many questions side by side in one stream.

A *flow* is a generator that yields a list of requests (one stage of its work, labelled by stage), is sent
back their outputs in the same order, and finally returns its result: ``regenesis.stages_flow`` yields the
adapt, structure and path requests of some drafts and returns their candidates. The same flow runs two ways:

- ``drive``: each yield is one engine call (``ledger.run_stage``). A flow over a whole chunk of questions is
  the stage-major order: every adaptation of the chunk, then every structure, then every path.
- ``run_flows``: many flows (one per question) share one engine stream (``engines.streaming``): a question's
  next stage goes out the moment its own previous stage is done, so the engine never idles waiting for the
  slowest request of a stage.

Requests carry seeds derived from their identity, never from their order, so both ways send the same
requests and a store written one way answers the other.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, TypeVar

from regenesis_pl.engines.base import Engine, Request, RequestOutput
from regenesis_pl.engines.streaming import stream
from regenesis_pl.method.ledger import TokenLedger, check_outputs, run_stage

T = TypeVar("T")
Flow = Generator[list[Request], list[RequestOutput], T]


def drive(engine: Engine, flow: Flow[T], ledger: TokenLedger | None = None) -> T:
    """Run a flow one engine call per yield; returns what the flow returns."""
    try:
        batch = next(flow)
        while True:
            outputs = _call(engine, batch, ledger) if batch else []
            batch = flow.send(outputs)
    except StopIteration as stop:
        return stop.value


def _call(engine: Engine, batch: list[Request], ledger: TokenLedger | None) -> list[RequestOutput]:
    first = batch[0]
    if any(r.sampling != first.sampling or r.label != first.label for r in batch):
        raise ValueError(f"flow step {first.label!r}: one engine call needs one sampling setting and one stage")
    return run_stage(engine, first.label, [r.conversation for r in batch], first.sampling, [r.seed for r in batch],
                     ledger)


def run_flows(engine: Engine, flows: Sequence[Flow[Any]], ledger: TokenLedger | None = None,
              progress: str | None = None) -> list[Any]:
    """Run flows side by side in one engine stream; returns each flow's result, in order.

    A flow's next step starts as soon as all requests of its current step are done. In the ledger, requests
    and tokens are counted per stage as they finish, and ``calls`` counts one per stage per stream.
    """
    results: list[Any] = [None] * len(flows)
    done = [False] * len(flows)
    owner: dict[int, tuple[int, int]] = {}  # stream number -> (flow, position in its current step)
    step: list[list[Request]] = [[] for _ in flows]
    outputs: list[list[RequestOutput | None]] = [[] for _ in flows]
    left = [0] * len(flows)
    numbered = 0
    stages: set[str] = set()

    def advance(f: int, sent: list[RequestOutput] | None) -> list[Request]:
        """Step flow ``f`` to its next non-empty batch (numbering it in the stream), or to its end."""
        nonlocal numbered
        try:
            batch = next(flows[f]) if sent is None else flows[f].send(sent)
            while not batch:
                batch = flows[f].send([])
        except StopIteration as stop:
            results[f], done[f] = stop.value, True
            return []
        owner.update((numbered + k, (f, k)) for k in range(len(batch)))
        numbered += len(batch)
        step[f], outputs[f], left[f] = batch, [None] * len(batch), len(batch)
        return batch

    def follow_up(finished: list[tuple[int, RequestOutput]]) -> list[Request]:
        ready = []
        for index, out in finished:
            f, k = owner.pop(index)
            request = step[f][k]
            check_outputs(engine, request.label, [out], request.sampling.n)
            if ledger is not None:
                ledger.record(request.label, [out], calls=0)
            stages.add(request.label)
            outputs[f][k] = out
            left[f] -= 1
            if left[f] == 0:
                ready.append(f)
        return [r for f in ready for r in advance(f, outputs[f])]

    first = [r for f in range(len(flows)) for r in advance(f, None)]
    if first:
        stream(engine, first, follow_up, progress)
    if not all(done):
        raise RuntimeError(f"engine {getattr(engine, 'name', '?')}: the stream ended with "
                           f"{done.count(False)} flow(s) still waiting for outputs")
    if ledger is not None:
        ledger.calls.update({stage: 1 for stage in stages})
    return results

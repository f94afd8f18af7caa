"""One checked engine call per stage, with token accounting (what a synthesis round spent, by stage)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from regenesis_pl.engines.base import Conversation, Engine, RequestOutput, SamplingConfig


@dataclass
class TokenLedger:
    """Engine usage of a round, by stage name ("select", "adapt", "structure", "path", "judge", "cot", ...).

    Attributes:
        calls: Engine calls per stage (stage-major), or streams the stage ran in (pipelined).
        requests: Requests (conversations) per stage.
        prompt_tokens: Prompt tokens per stage (as reported by the engine).
        generated_tokens: Generated tokens per stage, summed over all completions.
    """

    calls: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)
    prompt_tokens: Counter = field(default_factory=Counter)
    generated_tokens: Counter = field(default_factory=Counter)

    def record(self, stage: str, outputs: Sequence[RequestOutput], calls: int = 1) -> None:
        """Count ``outputs`` of ``stage``, as ``calls`` engine calls (0 inside a stream, see ``flows.run_flows``)."""
        self.calls[stage] += calls
        self.requests[stage] += len(outputs)
        self.prompt_tokens[stage] += sum(o.prompt_tokens for o in outputs)
        self.generated_tokens[stage] += sum(c.num_tokens for o in outputs for c in o.completions)

    def add(self, other: TokenLedger) -> TokenLedger:
        """Add another ledger's counts to this one (merging the shards of a round); returns self."""
        for mine, theirs in ((self.calls, other.calls), (self.requests, other.requests),
                             (self.prompt_tokens, other.prompt_tokens), (self.generated_tokens, other.generated_tokens)):
            mine.update(theirs)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> TokenLedger:
        """Read back ``to_dict`` output."""
        return cls(calls=Counter(d.get("engine_calls", {})), requests=Counter(d.get("requests", {})),
                   prompt_tokens=Counter(d.get("prompt_tokens", {})),
                   generated_tokens=Counter(d.get("generated_tokens", {})))

    def to_dict(self) -> dict:
        return {
            "engine_calls": dict(self.calls),
            "requests": dict(self.requests),
            "prompt_tokens": dict(self.prompt_tokens),
            "generated_tokens": dict(self.generated_tokens),
            "total_prompt_tokens": sum(self.prompt_tokens.values()),
            "total_generated_tokens": sum(self.generated_tokens.values()),
        }


def run_stage(
    engine: Engine,
    stage: str,
    conversations: Sequence[Conversation],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    ledger: TokenLedger | None = None,
) -> list[RequestOutput]:
    """Send one batch to the engine (one call, whatever its size) and check the reply's shape.

    Raises:
        RuntimeError: the engine returned a different number of outputs or completions than asked for.
    """
    if not conversations:
        return []
    outputs = engine.generate(list(conversations), sampling, request_seeds=list(seeds), progress=stage)
    check_outputs(engine, stage, outputs, sampling.n, len(conversations))
    if ledger is not None:
        ledger.record(stage, outputs)
    return outputs


def check_outputs(engine: Engine, stage: str, outputs: Sequence[RequestOutput], n: int,
                  expected: int | None = None) -> None:
    """Raise RuntimeError when the engine returned a different number of outputs (``expected``, when given) or of
    completions per output (``n``) than asked for."""
    name = getattr(engine, "name", "?")
    if expected is not None and len(outputs) != expected:
        raise RuntimeError(f"engine {name}: stage {stage} got {len(outputs)} outputs for {expected} requests")
    for out in outputs:
        if len(out.completions) != n:
            raise RuntimeError(f"engine {name}: stage {stage} got {len(out.completions)} completions where n={n}")

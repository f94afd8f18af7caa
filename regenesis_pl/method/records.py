"""Typed records of synthesis: every candidate keeps its full lineage from guideline to verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    """Why a candidate path was kept or dropped."""

    PENDING = "pending"            # not filtered yet
    CORRECT = "correct"            # matches the gold answer (kept unless a later gate drops it)
    WRONG = "wrong"                # extracted answer differs from the gold answer
    UNPARSED = "unparsed"          # no final answer could be extracted
    MAJORITY = "majority"          # agrees with the self-consistency majority (no gold answer used)
    MINORITY = "minority"          # disagrees with the majority, or agreement below the threshold
    JUDGE_REJECTED = "judge_rejected"
    TOO_LONG = "too_long"          # path longer than the token cap
    DUPLICATE = "duplicate"        # near-identical to a path already kept
    OVER_LIMIT = "over_limit"      # correct, but the question already has k kept paths
    HINT_LEAK = "hint_leak"        # hint-pass path that mentions having been given the answer


@dataclass
class Candidate:
    """One reasoning path and how it was made.

    Attributes:
        question_id: Id of the question (``Question.id``).
        task: Task name.
        method: "regenesis", "star", "lmsi" or "gt".
        round: Self-improvement round (0-based).
        guideline_id: Seed guideline id (ReGenesis), a selection id ("sel-3"), or the baseline's prompt id.
        sample_index: Index among samples made from the same prompt.
        hint: True when made in the ground-truth hint pass (the hint is never part of ``path``).
        adapted: Stage 1 output: the guideline adapted to the task.
        structure: Stage 2 output: the reasoning structure.
        path: Stage 3 output: the reasoning path (the SFT target).
        answer: Final answer extracted from the path, or None.
        verdict: Filter outcome.
        kept: Whether the path goes into the SFT data.
        tokens: Generated tokens over all stages for this candidate.
        path_tokens: Tokens of the path alone (the length cap applies to it).
    """

    question_id: str
    task: str
    method: str
    round: int = 0
    guideline_id: str = ""
    sample_index: int = 0
    hint: bool = False
    adapted: str = ""
    structure: str = ""
    path: str = ""
    answer: str | None = None
    verdict: Verdict = Verdict.PENDING
    kept: bool = False
    tokens: int = 0
    path_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = Verdict(self.verdict).value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(**{**d, "verdict": Verdict(d.get("verdict", "pending"))})

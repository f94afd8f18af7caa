"""Typed records for benchmark questions: the unit every stage, filter and metric works on."""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class AnswerType(str, Enum):
    """How a task's final answer is graded."""

    NUMERIC = "numeric"
    MULTIPLE_CHOICE = "multiple_choice"
    YES_NO = "yes_no"
    FREE_TEXT = "free_text"


LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Question:
    """One question of a task.

    Attributes:
        id: Stable identifier, unique within its task (used as a store and cache key).
        task: Name of the task the question belongs to.
        text: The question itself, without the answer options.
        answer_type: How the final answer is graded.
        answer: Gold answer, or None when the task has none. Numeric: the number as text
            ("-3.5"); multiple choice: the option letter ("B"); yes/no: "yes" or "no"; free text: the text.
        choices: Option texts for multiple choice, in order; option i has letter ``LETTERS[i]``.
        rationale: A reference rationale when the dataset has one (used by the GT-SFT baseline).
        source: Provenance, e.g. ``path/to/file.jsonl:12``.
    """

    id: str
    task: str
    text: str
    answer_type: AnswerType
    answer: str | None = None
    choices: tuple[str, ...] = ()
    rationale: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.answer_type, AnswerType):
            object.__setattr__(self, "answer_type", AnswerType(self.answer_type))
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.answer_type is AnswerType.MULTIPLE_CHOICE and not self.choices:
            raise ValueError(f"question {self.task}/{self.id} ({self.source}): multiple choice without choices")

    @property
    def letters(self) -> str:
        """Letters of the options, e.g. "ABCD" for four choices."""
        return LETTERS[: len(self.choices)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["answer_type"] = self.answer_type.value
        d["choices"] = list(self.choices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        return cls(**{**d, "choices": tuple(d.get("choices", ()))})

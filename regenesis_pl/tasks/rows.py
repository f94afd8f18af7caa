"""From raw dataset rows (dicts) to typed ``Question`` records: field mapping, answer-type detection and
gold-answer normalization, with one-line errors that name the file and line of a bad row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

from regenesis_pl.tasks.answers import format_number, letter_in, parse_number, yes_no_in
from regenesis_pl.tasks.types import LETTERS, AnswerType, Question

_YES_NO_WORDS = {"yes", "no", "true", "false"}


@dataclass(frozen=True)
class FieldMap:
    """Which column of a dataset row holds each part of a question.

    Args:
        question: Column with the question text (required in every row).
        answer: Column with the gold answer; None to load questions without gold answers.
        choices: Column with the option texts (a list, or a ``{"text": [...], "label": [...]}`` dict).
        rationale: Column with a reference rationale, if any.
        id: Column with a stable id; without it the row number is the id.
    """

    question: str = "question"
    answer: str | None = "answer"
    choices: str | None = "choices"
    rationale: str | None = "rationale"
    id: str | None = "id"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | None] | None) -> tuple[FieldMap, frozenset[str]]:
        """A FieldMap from a partial ``{"question": "input", ...}`` mapping, plus the keys it named
        explicitly (those columns must exist; the defaults of optional parts may be absent)."""
        mapping = dict(mapping or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown field mapping key(s) {unknown}; use only {sorted(known)}")
        return cls(**mapping), frozenset(k for k, v in mapping.items() if v is not None)


@dataclass(frozen=True)
class RawQuestion:
    """A row after field mapping, before the answer type is fixed."""

    id: str
    text: str
    answer: Any = None
    choices: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    rationale: str | None = None
    source: str = ""


def _choices(value: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Option texts and their dataset labels (``()`` when the dataset has none)."""
    if value is None:
        return (), ()
    if isinstance(value, Mapping) and "text" in value:
        texts = tuple(str(t) for t in value["text"])
        labels = tuple(str(v) for v in value.get("label") or ())
        return texts, labels if len(labels) == len(texts) else ()
    if isinstance(value, (list, tuple)):
        return tuple(str(t) for t in value), ()
    raise ValueError(f"{where}: choices must be a list of strings or a {{'text': [...], 'label': [...]}} "
                     f"dict, got {type(value).__name__}")


def map_row(row: Mapping[str, Any], fmap: FieldMap, explicit: frozenset[str], index: int,
            where: str) -> RawQuestion:
    """Apply a field mapping to one row; ``where`` ("file.jsonl:12") goes into every error."""
    if not isinstance(row, Mapping):
        raise TypeError(f"{where}: expected a JSON object per row, got {type(row).__name__}")

    def get(part: str, required: bool) -> Any:
        column = getattr(fmap, part)
        if column is None:
            return None
        if column not in row:
            if required or part in explicit:
                raise ValueError(f"{where}: row has no {part} field {column!r} (columns: {sorted(row)}); "
                                 f"set fields={{'{part}': '<column>'}}")
            return None
        return row[column]

    text = get("question", True)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: question field {fmap.question!r} is empty or not text")
    answer = get("answer", fmap.answer is not None)
    if fmap.answer is not None and (answer is None or (isinstance(answer, str) and not answer.strip())):
        raise ValueError(f"{where}: answer field {fmap.answer!r} is empty")
    choices, labels = _choices(get("choices", False), where)
    rationale = get("rationale", False)
    qid = get("id", False)
    return RawQuestion(id=str(index) if qid is None else str(qid), text=text.strip(), answer=answer,
                       choices=choices, labels=labels,
                       rationale=str(rationale) if rationale not in (None, "") else None, source=where)


def _looks_yes_no(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _YES_NO_WORDS)


def _looks_numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and parse_number(value.rsplit("####", 1)[-1]) is not None


def infer_answer_type(raws: list[RawQuestion]) -> AnswerType:
    """Multiple choice when rows have options; yes/no, numeric or free text from the gold answers."""
    if raws and all(r.choices for r in raws):
        return AnswerType.MULTIPLE_CHOICE
    answers = [r.answer for r in raws if r.answer is not None]
    if answers and all(_looks_yes_no(a) for a in answers):
        return AnswerType.YES_NO
    if answers and all(_looks_numeric(a) for a in answers):
        return AnswerType.NUMERIC
    return AnswerType.FREE_TEXT


def normalize_gold(value: Any, kind: AnswerType, raw: RawQuestion) -> str:
    """A gold answer in the form ``Question.answer`` documents; one-line ValueError when it does not fit."""
    where = raw.source
    if kind is AnswerType.NUMERIC:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return format_number(Fraction(str(value)))
        number = parse_number(str(value).rsplit("####", 1)[-1])
        if number is None:
            raise ValueError(f"{where}: numeric answer {value!r} is not a number; fix the row or set "
                             "answer_type to free_text")
        return format_number(number)
    if kind is AnswerType.YES_NO:
        if isinstance(value, bool):
            return "yes" if value else "no"
        found = yes_no_in(str(value)) if _looks_yes_no(value) else None
        if found is None:
            raise ValueError(f"{where}: yes/no answer {value!r} is not yes/no/true/false")
        return found
    if kind is AnswerType.MULTIPLE_CHOICE:
        letters = LETTERS[: len(raw.choices)]
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(raw.choices):
                raise ValueError(f"{where}: answer index {value} is outside the {len(raw.choices)} choices")
            return letters[value]
        text = str(value).strip()
        if raw.labels and text in raw.labels:
            return letters[raw.labels.index(text)]
        letter = letter_in(text, raw.choices, letters)
        if letter is None:
            raise ValueError(f"{where}: answer {value!r} names none of the options {letters} "
                             f"(or names several)")
        return letter
    return str(value).strip()


def to_questions(raws: Iterable[RawQuestion], task: str, answer_type: AnswerType | str | None = None) -> list[Question]:
    """Typed questions from mapped rows; the answer type is inferred when not given. Duplicate ids are
    an error (ids key caches and stores)."""
    raws = list(raws)
    kind = AnswerType(answer_type) if answer_type else infer_answer_type(raws)
    out, seen = [], {}
    for raw in raws:
        if raw.id in seen:
            raise ValueError(f"{raw.source}: duplicate id {raw.id!r} (first at {seen[raw.id]}); "
                             "map a unique id column with fields={'id': ...}")
        seen[raw.id] = raw.source
        if kind is AnswerType.MULTIPLE_CHOICE and not raw.choices:
            raise ValueError(f"{raw.source}: multiple-choice row has no choices")
        gold = None if raw.answer is None else normalize_gold(raw.answer, kind, raw)
        out.append(Question(id=raw.id, task=task, text=raw.text, answer_type=kind, answer=gold,
                            choices=raw.choices if kind is AnswerType.MULTIPLE_CHOICE else (),
                            rationale=raw.rationale, source=raw.source))
    return out


def rows_to_questions(rows: Iterable[tuple[str, Mapping[str, Any]]], task: str,
                      fields_map: Mapping[str, str | None] | None = None,
                      answer_type: AnswerType | str | None = None) -> list[Question]:
    """Questions from ``(where, row)`` pairs with a field mapping (see ``FieldMap``)."""
    fmap, explicit = FieldMap.from_mapping(fields_map)
    raws = [map_row(row, fmap, explicit, i, where) for i, (where, row) in enumerate(rows)]
    return to_questions(raws, task, answer_type)

"""Kept candidates -> SFT records (chat messages plus lineage), and reading them back from JSONL.

A record's ``messages`` come from ``chat.sft_messages``: the user turn is exactly the evaluation prompt and
the assistant turn is the reasoning path, so training and evaluation see the same text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from regenesis_pl.atomic import read_jsonl
from regenesis_pl.chat import sft_messages
from regenesis_pl.method.records import Candidate
from regenesis_pl.tasks.types import Question

SFT_FIELDS = ("messages", "question_id", "task", "method", "round", "guideline_id", "hint")


def sft_records(kept: Iterable[Candidate], questions: Mapping[str, Question] | Sequence[Question]
                ) -> list[dict[str, Any]]:
    """One SFT record per kept candidate, in the given order.

    Args:
        kept: Candidates to export (normally those with ``kept=True``).
        questions: The questions they answer, by id or as a list.

    Raises:
        ValueError: a candidate names a question that is not given, or has an empty path.
    """
    by_id = dict(questions) if isinstance(questions, Mapping) else {q.id: q for q in questions}
    records = []
    for cand in kept:
        question = by_id.get(cand.question_id)
        if question is None:
            raise ValueError(f"export: candidate of question {cand.task}/{cand.question_id} has no matching "
                             f"question among {len(by_id)} given; pass the questions the round used")
        if not cand.path.strip():
            raise ValueError(f"export: candidate {cand.question_id}/{cand.guideline_id} has an empty path; "
                             "only filtered (kept) candidates belong in SFT data")
        records.append({
            "messages": sft_messages(question, cand.path),
            "question_id": cand.question_id,
            "task": cand.task,
            "method": cand.method,
            "round": cand.round,
            "guideline_id": cand.guideline_id,
            "hint": bool(cand.hint),
        })
    return records


def load_sft_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read SFT records (``kept.jsonl``, written with ``atomic.write_jsonl``); every line is checked.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line is not JSON or lacks fields, with its line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT records: no file {path}; run `regenesis synthesize` first or fix the path")
    records = []
    for number, rec in read_jsonl(path, "SFT records", "rewrite the file"):
        missing = [k for k in SFT_FIELDS if k not in rec]
        if missing:
            raise ValueError(f"SFT records {path}:{number}: missing fields {missing}; "
                             "expected records from regenesis_pl.round.sft_records")
        messages = rec["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"SFT records {path}:{number}: messages must end with an assistant turn")
        records.append(rec)
    return records


def load_candidates(path: str | os.PathLike) -> list[Candidate]:
    """Read back ``candidates.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"candidates: no file {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Candidate.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"candidates {path} line {number} is unreadable ({type(err).__name__}: {err}); delete "
                                 "the file and rerun the same command: its generations are stored, none is redone") from None
    return out

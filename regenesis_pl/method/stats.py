"""A JSON-ready summary of one synthesis round: coverage, verdicts, guideline utilization, diversity, tokens."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from regenesis_pl.method.filters import normalize
from regenesis_pl.method.ledger import TokenLedger
from regenesis_pl.method.records import Candidate, Verdict
from regenesis_pl.tasks.grading import grade
from regenesis_pl.tasks.types import Question

# Verdicts reached only by paths whose answer passed the answer check (gold match or majority).
ANSWER_OK = frozenset({Verdict.CORRECT, Verdict.MAJORITY, Verdict.TOO_LONG, Verdict.HINT_LEAK,
                       Verdict.JUDGE_REJECTED, Verdict.DUPLICATE, Verdict.OVER_LIMIT})


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n: unique word n-grams over all word n-grams of ``texts`` (0.0 when there are none)."""
    total, unique = 0, set()
    for text in texts:
        words = normalize(text)
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return round(len(unique) / total, 4) if total else 0.0


def guideline_utilization(candidates: Sequence[Candidate]) -> dict[str, dict]:
    """Per seed guideline: candidates that used it, how many passed the answer check, how many were kept.

    A selection (released scripts) credits each guideline it contains; ``accept_rate`` = passed / used.
    """
    table: dict[str, Counter] = defaultdict(Counter)
    for c in candidates:
        for gid in c.meta.get("guideline_ids") or [c.guideline_id]:
            row = table[gid]
            row["candidates"] += 1
            row["accepted"] += Verdict(c.verdict) in ANSWER_OK
            row["kept"] += c.kept
    return {gid: {**row, "accept_rate": round(row["accepted"] / row["candidates"], 4)}
            for gid, row in sorted(table.items())}


def majority_gold_check(kept: Sequence[Candidate], questions: Sequence[Question]) -> dict | None:
    """How many majority-voted kept paths also match the gold answer (which the vote did not use).

    A diagnostic of the vote's precision when the task has gold answers (LMSI on a benchmark); None when no
    kept path was chosen by majority vote or no such path's question has a gold answer.
    """
    by_id = {q.id: q for q in questions}
    voted = [c for c in kept if Verdict(c.verdict) is Verdict.MAJORITY
             and by_id.get(c.question_id) is not None and by_id[c.question_id].answer is not None]
    if not voted:
        return None
    matching = sum(grade(c.path, by_id[c.question_id]).correct for c in voted)
    return {"checked": len(voted), "matching": matching, "rate": round(matching / len(voted), 4)}


def round_stats(candidates: Sequence[Candidate], questions: Sequence[Question], ledger: TokenLedger,
                hint_questions: Iterable[str] = (), skipped: dict[str, int] | None = None) -> dict:
    """Summary of a round.

    Args:
        candidates: Every candidate made this round, with verdicts (main and hint pass).
        questions: The round's questions.
        ledger: The round's engine usage.
        hint_questions: Ids of the questions that went through the hint pass (none kept in the main pass).
        skipped: Counted skips, e.g. ``{"selection_unparsed": 3, "no_target": 2}``.
    """
    kept_per_q = Counter(c.question_id for c in candidates if c.kept)
    hinted = set(hint_questions)
    recovered = {c.question_id for c in candidates if c.kept and c.hint}
    kept = [c for c in candidates if c.kept]
    parsed = sum(c.answer is not None for c in candidates)
    boxed = sum(bool(c.meta.get("boxed")) for c in candidates)
    hist = Counter(kept_per_q.get(q.id, 0) for q in questions)
    return {
        "questions": len(questions),
        "questions_solved": len(kept_per_q),
        "solved_rate": round(len(kept_per_q) / len(questions), 4) if questions else 0.0,
        "solved_main_pass": len({c.question_id for c in kept if not c.hint}),
        "hint": {"questions": len(hinted), "recovered": len(recovered & hinted),
                 "candidates": sum(c.hint for c in candidates)},
        "candidates": len(candidates),
        "answer_parse_rate": round(parsed / len(candidates), 4) if candidates else 0.0,
        "boxed_rate": round(boxed / len(candidates), 4) if candidates else 0.0,
        "verdicts": {v.value: n for v, n in sorted(Counter(Verdict(c.verdict) for c in candidates).items(),
                                                   key=lambda kv: kv[0].value)},
        "kept": len(kept),
        "kept_per_question": {
            "mean": round(len(kept) / len(questions), 4) if questions else 0.0,
            "max": max(kept_per_q.values(), default=0),
            "histogram": {str(k): hist[k] for k in sorted(hist)},
        },
        "majority_kept_matching_gold": majority_gold_check(kept, questions),
        "kept_path_tokens_mean": round(sum(c.path_tokens for c in kept) / len(kept), 2) if kept else 0.0,
        "distinct_1": distinct_n((c.path for c in kept), 1),
        "distinct_2": distinct_n((c.path for c in kept), 2),
        "guidelines": guideline_utilization(candidates),
        "skipped": dict(skipped or {}),
        "tokens": ledger.to_dict(),
    }

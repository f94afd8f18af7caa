"""Which synthesized paths become training data: answer check, gates, dedup and the per-question cap.

Order of the gates (``filter_flow``):
1. answer check: gold match via ``tasks.grading`` (CORRECT / WRONG / UNPARSED), or, without gold answers,
   self-consistency majority vote per question (MAJORITY / MINORITY / UNPARSED); with ``require_boxed``
   a path must state its answer in ``\\boxed{}`` (as the prompts ask), else it is UNPARSED even when the
   grader's fallbacks (last number, ...) find an answer: kept paths then teach the answer format;
2. length cap: accepted paths longer than ``max_path_tokens`` model tokens, or cut off by the generation
   limit, become TOO_LONG (a cut-off path is not a complete answer);
3. hint leak: hint-pass paths that talk about having been given the answer become HINT_LEAK;
4. optional judge gate: the model itself, greedy, is asked whether the path's final answer agrees with the
   gold answer; anything but a clear "yes" is JUDGE_REJECTED;
5. per question, in a seeded random order: near-duplicates of an already kept path become DUPLICATE,
   and accepted paths beyond ``max_per_question`` become OVER_LIMIT; the rest are kept.

The functions set ``answer``/``verdict``/``kept`` on the given candidates in place and return them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from regenesis_pl.engines.base import Request, SamplingConfig
from regenesis_pl.hashing import stable_rng, stable_seed
from regenesis_pl.method.flows import Flow
from regenesis_pl.method.prompts import judge_prompt, parse_judgement
from regenesis_pl.method.records import Candidate, Verdict
from regenesis_pl.tasks.grading import canonical_answer, extract_answer, grade
from regenesis_pl.tasks.types import Question

ACCEPTED = frozenset({Verdict.CORRECT, Verdict.MAJORITY})


def _question(questions: Mapping[str, Question], c: Candidate) -> Question:
    try:
        return questions[c.question_id]
    except KeyError:
        raise ValueError(f"candidate of question {c.task}/{c.question_id}: question not among those given "
                         "to the filter") from None


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*[^{}\s]")


def has_boxed_answer(text: str) -> bool:
    """Whether a path states a non-empty ``\\boxed{...}`` (or ``\\fbox{...}``) answer."""
    return _BOX.search(text) is not None


def parsed_answer(text: str, question: Question) -> str | None:
    """The canonical final answer of a path, or None when none can be extracted."""
    answer = extract_answer(text, question)
    return None if answer is None else canonical_answer(answer, question)


def _unboxed(c: Candidate, require_boxed: bool) -> bool:
    c.meta["boxed"] = has_boxed_answer(c.path)
    return require_boxed and not c.meta["boxed"]


def check_gold(candidates: Sequence[Candidate], questions: Mapping[str, Question],
               require_boxed: bool = True) -> Sequence[Candidate]:
    """Grade each path against its question's gold answer: CORRECT, WRONG or UNPARSED.

    With ``require_boxed``, a path without a ``\\boxed{}`` answer is UNPARSED (its fallback answer is
    still recorded in ``answer``).

    Raises:
        ValueError: a question has no gold answer (use majority vote, ``use_gold=False``, instead).
    """
    for c in candidates:
        q = _question(questions, c)
        if q.answer is None:
            raise ValueError(f"question {q.task}/{q.id} ({q.source or 'no source'}): no gold answer to filter "
                             "against; set use_gold=False to filter by majority vote")
        result = grade(c.path, q)
        c.answer = None if result.answer is None else canonical_answer(result.answer, q)
        unboxed = _unboxed(c, require_boxed)
        c.verdict = (Verdict.UNPARSED if not result.parsed or unboxed
                     else Verdict.CORRECT if result.correct else Verdict.WRONG)
    return candidates


def majority_vote(candidates: Sequence[Candidate], questions: Mapping[str, Question],
                  min_agreement: float = 0.0, require_boxed: bool = True) -> Sequence[Candidate]:
    """Self-consistency without gold answers: keep paths whose answer is the question's most common one.

    Agreement is the majority answer's count over ALL of the question's candidates (unparsed ones
    included). A tie for the most common answer, or agreement below ``min_agreement``, means no majority:
    every parsed path of that question becomes MINORITY.

    Args:
        candidates: Paths of any number of questions (each question's candidates all together).
        questions: Questions by id.
        min_agreement: Minimum share in [0, 1] of candidates that must agree with the majority answer.
        require_boxed: Paths without a ``\\boxed{}`` answer do not vote (UNPARSED).
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement={min_agreement}: must be a share between 0 and 1")
    by_question: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        c.answer = parsed_answer(c.path, _question(questions, c))
        if _unboxed(c, require_boxed):
            c.answer = None
        by_question[c.question_id].append(c)
    for group in by_question.values():
        counts = Counter(c.answer for c in group if c.answer is not None)
        top = counts.most_common(2)
        winner = None
        if top and (len(top) == 1 or top[0][1] > top[1][1]) and top[0][1] / len(group) >= min_agreement:
            winner = top[0][0]
        for c in group:
            c.verdict = (Verdict.UNPARSED if c.answer is None
                         else Verdict.MAJORITY if c.answer == winner else Verdict.MINORITY)
            c.meta["agreement"] = round(counts[c.answer] / len(group), 4) if c.answer is not None else 0.0
    return candidates


def cap_length(candidates: Sequence[Candidate], max_path_tokens: int | None) -> Sequence[Candidate]:
    """Accepted paths over ``max_path_tokens`` tokens, or cut off at the generation limit, become TOO_LONG."""
    for c in candidates:
        if c.verdict not in ACCEPTED:
            continue
        cut_off = c.meta.get("finish", {}).get("path") == "length"
        if cut_off or (max_path_tokens is not None and c.path_tokens > max_path_tokens):
            c.verdict = Verdict.TOO_LONG
    return candidates


_LEAK = re.compile(
    r"\b(given|told|provided|known|stated|shown)\s+(that\s+)?(the\s+)?(correct\s+|final\s+|right\s+)?answer\b"
    r"|\banswer\s+(is|was)\s+(given|provided|known|stated|shown)\b"
    r"|\b(the|a|this)\s+hint\b|\breference\s+answer\b",
    re.IGNORECASE,
)


def mentions_hint(path: str) -> bool:
    """True when a path talks about having been handed the answer ("given that the answer is ...")."""
    return _LEAK.search(path) is not None


def drop_hint_leaks(candidates: Sequence[Candidate]) -> Sequence[Candidate]:
    """Accepted hint-pass paths that mention the hint become HINT_LEAK (they would teach answer-parroting)."""
    for c in candidates:
        if c.hint and c.verdict in ACCEPTED and mentions_hint(c.path):
            c.verdict = Verdict.HINT_LEAK
    return candidates


def judge_flow(candidates: Sequence[Candidate], questions: Mapping[str, Question], max_tokens: int = 16,
               seed: int = 0) -> Flow[Sequence[Candidate]]:
    """Second gate (released scripts): the model, greedy, says whether each accepted path agrees with gold.

    One step for all accepted candidates (none when there are none); replies without a clear "yes" become
    JUDGE_REJECTED. The reply is only searched for a yes/no word, never executed or evaluated.
    """
    todo = [c for c in candidates if c.verdict in ACCEPTED]
    if not todo:
        return candidates
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed)
    outputs = yield [Request(judge_prompt(_question(questions, c), c.path), greedy,
                             stable_seed(seed, c.round, "judge", c.question_id, c.guideline_id, int(c.hint),
                                         c.sample_index), "judge") for c in todo]
    for c, out in zip(todo, outputs):
        reply = out.completions[0].text
        verdict = parse_judgement(reply)
        c.meta["judge"] = "yes" if verdict else "no" if verdict is False else "unparsed"
        c.tokens += out.completions[0].num_tokens
        if not verdict:
            c.verdict = Verdict.JUDGE_REJECTED
    return candidates


def normalize(text: str) -> list[str]:
    """Lower-cased alphanumeric words of a text (the unit of dedup and distinct-n)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity of two sets (1.0 for two empty sets)."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def select_kept(candidates: Sequence[Candidate], max_per_question: int | None = 5,
                dedup_threshold: float | None = 0.9, ngram: int = 3, seed: int = 0) -> Sequence[Candidate]:
    """Mark the kept paths: per question, in a seeded random order, skip near-duplicates, stop at k.

    Args:
        candidates: Filtered candidates (only CORRECT/MAJORITY ones are considered).
        max_per_question: Most paths kept per question (None for no cap); extra ones become OVER_LIMIT.
        dedup_threshold: Word ``ngram`` Jaccard similarity in (0, 1] at or above which a path is a
            DUPLICATE of one already kept (1.0: only paths with identical n-gram sets); None disables.
        ngram: n of the word n-grams compared.
        seed: Base seed of the seeded order.
    """
    if max_per_question is not None and max_per_question < 1:
        raise ValueError(f"max_paths_per_question={max_per_question}: must be >= 1 (or None for no cap)")
    if dedup_threshold is not None and not 0.0 < dedup_threshold <= 1.0:
        raise ValueError(f"dedup_threshold={dedup_threshold}: must be in (0, 1] (or None to disable)")
    by_question: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.verdict in ACCEPTED:
            by_question[c.question_id].append(c)
    for qid, group in by_question.items():
        group.sort(key=lambda c: (int(c.hint), c.guideline_id, c.sample_index))  # order-independent start
        stable_rng(seed, group[0].round, "keep", qid).shuffle(group)
        kept_grams: list[set] = []
        for c in group:
            grams = _ngrams(normalize(c.path), ngram)
            if dedup_threshold is not None and any(jaccard(grams, g) >= dedup_threshold for g in kept_grams):
                c.verdict = Verdict.DUPLICATE
            elif max_per_question is not None and len(kept_grams) >= max_per_question:
                c.verdict = Verdict.OVER_LIMIT
            else:
                c.kept = True
                kept_grams.append(grams)
    return candidates


def filter_flow(candidates: Sequence[Candidate], questions: Mapping[str, Question], use_gold: bool = True,
                min_agreement: float = 0.0, require_boxed: bool = True, max_path_tokens: int | None = 800,
                max_per_question: int | None = 5, dedup_threshold: float | None = 0.9, judge: bool = False,
                seed: int = 0) -> Flow[Sequence[Candidate]]:
    """All gates in order (see the module docstring); a step only for the judge, when ``judge`` is on."""
    for c in candidates:
        c.kept = False
    if use_gold:
        check_gold(candidates, questions, require_boxed)
    else:
        majority_vote(candidates, questions, min_agreement, require_boxed)
    cap_length(candidates, max_path_tokens)
    drop_hint_leaks(candidates)
    if judge:
        yield from judge_flow(candidates, questions, seed=seed)
    return select_kept(candidates, max_per_question, dedup_threshold, seed=seed)

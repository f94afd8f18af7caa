"""Filter gates as table tests: gold check, majority vote, length cap, hint leaks, judge, dedup, k cap, stats."""

from __future__ import annotations

import pytest
from method_fakes import ScriptedEngine

from regenesis_pl.method.filters import (
    cap_length,
    check_gold,
    drop_hint_leaks,
    judge_flow,
    majority_vote,
    mentions_hint,
    select_kept,
)
from regenesis_pl.method.flows import drive
from regenesis_pl.method.records import Candidate, Verdict
from regenesis_pl.method.stats import distinct_n, guideline_utilization
from regenesis_pl.tasks.types import AnswerType, Question

Q = Question(id="q", task="toy", text="What is 2 + 5?", answer_type=AnswerType.NUMERIC, answer="7")
YN = Question(id="y", task="toy", text="Is ice cold?", answer_type=AnswerType.YES_NO, answer="yes")
BY_ID = {"q": Q, "y": YN}


def cand(path: str, qid: str = "q", gid: str = "g01", i: int = 0, **kw) -> Candidate:
    return Candidate(question_id=qid, task="toy", method="regenesis", guideline_id=gid, sample_index=i,
                     path=path, **kw)


def boxed(x: str, words: str = "We add the numbers") -> str:
    return f"{words}. \\boxed{{{x}}}"


def test_check_gold_verdicts():
    cs = [cand(boxed("7")), cand(boxed("8"), i=1), cand("I do not know", i=2), cand(boxed("yes"), "y", i=3)]
    check_gold(cs, BY_ID)
    assert [c.verdict for c in cs] == [Verdict.CORRECT, Verdict.WRONG, Verdict.UNPARSED, Verdict.CORRECT]
    assert cs[0].answer is not None and cs[2].answer is None


@pytest.mark.parametrize("path, require_boxed, verdict", [
    ("2 + 5 = 7, so the answer is 7.", True, Verdict.UNPARSED),
    ("2 + 5 = 7, so the answer is 7.", False, Verdict.CORRECT),
    ("2 + 5 = 7. \\boxed{}", True, Verdict.UNPARSED),
    ("2 + 5 = 7. \\boxed{ 7 }", True, Verdict.CORRECT),
    ("2 + 5 = 7. \\fbox{7}", True, Verdict.CORRECT),
])
def test_require_boxed(path, require_boxed, verdict):
    c = cand(path)
    check_gold([c], BY_ID, require_boxed=require_boxed)
    assert c.verdict == verdict and c.answer == "7"
    m = cand(path)
    majority_vote([m], BY_ID, require_boxed=require_boxed)
    assert m.verdict == (Verdict.MAJORITY if verdict == Verdict.CORRECT else Verdict.UNPARSED)


def test_check_gold_without_gold_says_use_majority_vote():
    no_gold = Question(id="z", task="toy", text="?", answer_type=AnswerType.NUMERIC)
    with pytest.raises(ValueError, match="use_gold=False"):
        check_gold([cand(boxed("1"), "z")], {"z": no_gold})


@pytest.mark.parametrize("answers, min_agreement, expected", [
    (["7", "7", "3"], 0.0, "MMm"),
    (["7", "3"], 0.0, "mm"),                       # tie: no majority
    (["7", "7", "3"], 0.7, "mmm"),                 # 2/3 < 0.7
    (["7", "7", None, None], 0.5, "MMUU"),         # unparsed count in the denominator: 2/4 >= 0.5
    (["7", "7", None, None], 0.6, "mmUU"),
    ([None, None], 0.0, "UU"),
    (["5"], 1.0, "M"),
])
def test_majority_vote_table(answers, min_agreement, expected):
    cs = [cand(boxed(a) if a else "no idea", i=i) for i, a in enumerate(answers)]
    majority_vote(cs, BY_ID, min_agreement)
    code = {Verdict.MAJORITY: "M", Verdict.MINORITY: "m", Verdict.UNPARSED: "U"}
    assert "".join(code[c.verdict] for c in cs) == expected


def test_majority_vote_is_per_question():
    cs = [cand(boxed("7")), cand(boxed("yes"), "y", i=1), cand(boxed("no"), "y", i=2), cand(boxed("no"), "y", i=3)]
    majority_vote(cs, BY_ID)
    assert [c.verdict for c in cs] == [Verdict.MAJORITY, Verdict.MINORITY, Verdict.MAJORITY, Verdict.MAJORITY]


@pytest.mark.parametrize("tokens, finish, verdict, cap, expected", [
    (800, "stop", Verdict.CORRECT, 800, Verdict.CORRECT),
    (801, "stop", Verdict.CORRECT, 800, Verdict.TOO_LONG),
    (50, "length", Verdict.MAJORITY, 800, Verdict.TOO_LONG),   # cut off: not a complete answer
    (9999, "stop", Verdict.WRONG, 800, Verdict.WRONG),         # only accepted paths are capped
    (9999, "stop", Verdict.CORRECT, None, Verdict.CORRECT),
])
def test_length_cap(tokens, finish, verdict, cap, expected):
    c = cand("x", verdict=verdict, path_tokens=tokens, meta={"finish": {"path": finish}})
    cap_length([c], cap)
    assert c.verdict == expected


@pytest.mark.parametrize("path, leaks", [
    ("Given that the answer is 7, we check 2 + 5 = 7. \\boxed{7}", True),
    ("We were told the correct answer. \\boxed{7}", True),
    ("Using the hint, the sum is 7.", True),
    ("The reference answer says 7.", True),
    ("We are given 2 apples and 5 more, so the answer is 7. \\boxed{7}", False),
    ("Given x = 2, the final answer is \\boxed{7}", False),
])
def test_hint_leak_detection(path, leaks):
    assert mentions_hint(path) is leaks
    hinted, plain = cand(path, hint=True, verdict=Verdict.CORRECT), cand(path, verdict=Verdict.CORRECT)
    drop_hint_leaks([hinted, plain])
    assert hinted.verdict == (Verdict.HINT_LEAK if leaks else Verdict.CORRECT)
    assert plain.verdict == Verdict.CORRECT


def distinct_paths(n: int, qid: str = "q") -> list[Candidate]:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return [cand(f"{words[i]} {words[i + 1]} step {i} adds {i} then {words[(i + 3) % 10]} \\boxed{{7}}", qid,
                 gid=f"g{i:02d}", verdict=Verdict.CORRECT) for i in range(n)]


def test_k_cap_keeps_k_and_is_seeded_and_order_free():
    cs = distinct_paths(7)
    select_kept(cs, max_per_question=3, dedup_threshold=None, seed=1)
    kept = {c.guideline_id for c in cs if c.kept}
    assert len(kept) == 3 and sum(c.verdict == Verdict.OVER_LIMIT for c in cs) == 4
    again = list(reversed(distinct_paths(7)))
    select_kept(again, max_per_question=3, dedup_threshold=None, seed=1)
    assert {c.guideline_id for c in again if c.kept} == kept
    picks = set()
    for seed in range(8):
        other = distinct_paths(7)
        select_kept(other, max_per_question=3, dedup_threshold=None, seed=seed)
        picks.add(frozenset(c.guideline_id for c in other if c.kept))
    assert len(picks) > 1  # the seed drives the choice


def test_k_cap_ignores_rejected_and_counts_per_question():
    cs = distinct_paths(4) + distinct_paths(2, "y") + [cand("wrong", verdict=Verdict.WRONG, i=9)]
    select_kept(cs, max_per_question=2, dedup_threshold=None)
    assert sum(c.kept for c in cs if c.question_id == "q") == 2
    assert sum(c.kept for c in cs if c.question_id == "y") == 2
    assert cs[-1].verdict == Verdict.WRONG and not cs[-1].kept


@pytest.mark.parametrize("second, threshold, duplicate", [
    ("We add 2 and 5 to get 7. \\boxed{7}", 0.9, True),                 # identical
    ("we ADD 2 and 5,  to get 7!! \\boxed{7}", 0.9, True),              # same after normalization
    ("We add 2 and 5 to get 7 in total. \\boxed{7}", 0.5, True),   # trigram Jaccard 6/12
    ("We add 2 and 5 to get 7 in total. \\boxed{7}", 0.9, False),
    ("Five plus two makes seven, so \\boxed{7}", 0.5, False),
    ("We add 2 and 5 to get 7. \\boxed{7}", None, False),               # dedup disabled
])
def test_dedup_table(second, threshold, duplicate):
    cs = [cand("We add 2 and 5 to get 7. \\boxed{7}", verdict=Verdict.CORRECT),
          cand(second, i=1, verdict=Verdict.CORRECT)]
    select_kept(cs, max_per_question=5, dedup_threshold=threshold)
    assert sum(c.verdict == Verdict.DUPLICATE for c in cs) == int(duplicate)
    assert sum(c.kept for c in cs) == 2 - int(duplicate)


def test_select_kept_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_paths_per_question"):
        select_kept([], max_per_question=0)
    with pytest.raises(ValueError, match="dedup_threshold"):
        select_kept([], dedup_threshold=1.5)


def test_judge_step_parses_yes_no_and_is_greedy():
    replies = {"A": "Yes, it agrees.", "B": "No.", "C": "I cannot tell"}
    engine = ScriptedEngine(lambda stage, conv, seed, i: replies[conv[-1]["content"].split("Proposed solution:\n")[1][0]])
    cs = [cand(f"{k} path \\boxed{{7}}", gid=k, verdict=Verdict.CORRECT) for k in "ABC"]
    cs.append(cand("D path \\boxed{8}", gid="D", verdict=Verdict.WRONG))
    drive(engine, judge_flow(cs, BY_ID))  # the judge step of filter_flow, as one engine call
    assert [c.verdict for c in cs] == [Verdict.CORRECT, Verdict.JUDGE_REJECTED, Verdict.JUDGE_REJECTED, Verdict.WRONG]
    assert [c.meta.get("judge") for c in cs] == ["yes", "no", "unparsed", None]
    assert len(engine.calls) == 1 and engine.calls[0]["sampling"].greedy
    assert len(engine.calls[0]["conversations"]) == 3  # only accepted paths are judged


def test_distinct_n_and_guideline_utilization():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == round(2 / 3, 4)
    assert distinct_n([], 2) == 0.0
    cs = [cand("x", gid="g01", verdict=Verdict.CORRECT, kept=True), cand("y", gid="g01", verdict=Verdict.WRONG),
          cand("z", gid="sel-0", verdict=Verdict.DUPLICATE, meta={"guideline_ids": ["g01", "g02"]})]
    table = guideline_utilization(cs)
    assert table["g01"] == {"candidates": 3, "accepted": 2, "kept": 1, "accept_rate": round(2 / 3, 4)}
    assert table["g02"] == {"candidates": 1, "accepted": 1, "kept": 0, "accept_rate": 1.0}

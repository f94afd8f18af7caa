"""synthesize_round with a scripted engine: stage-major batching, lineage, hint pass, seeds, baselines, errors."""

from __future__ import annotations

import json
import re

import pytest
from method_fakes import ScriptedEngine, ShuffledStream, make_questions, question_in

from regenesis_pl.method.baselines import EXEMPLARS
from regenesis_pl.method.guidelines import load_guidelines
from regenesis_pl.method.records import Verdict
from regenesis_pl.method.synthesis import SynthesisConfig, synthesize_round
from regenesis_pl.tasks.types import AnswerType, Question

HINT_MARK = "correct final answer is"


def toy_respond(stage, conv, seed, i, leak=False, select_reply="2, 5"):
    """Even questions are solved directly; odd ones only when the gold answer reaches the path."""
    content = conv[-1]["content"]
    if stage == "select":
        return "none of these" if "What is 0 + 10?" in content else select_reply
    if stage == "adapt":
        return "Add the two numbers in this problem carefully."
    if stage == "structure":
        gold = re.search(r"known to be (\d+)", content)
        return "1. Read both numbers.\n2. Add them." + (f"\n3. Check that the sum is {gold.group(1)}." if gold else "")
    a, b = map(int, re.findall(r"\d+", question_in(conv))[:2])
    knows = "Check that the sum is" in content or HINT_MARK in content
    if stage == "cot":
        knows = HINT_MARK in content
    ans = a + b if (a % 2 == 0 or knows) else a + b + 1
    words = ["first", "then", "next", "so", "finally"][i % 5]
    if leak and HINT_MARK in content:
        return f"Given that the answer is {ans}, {a} + {b} = {ans}. \\boxed{{{ans}}}"
    return f"Take {a} and {b}; {words} {a} + {b} = {ans} (draft {seed % 97}). \\boxed{{{ans}}}"


def run(config: SynthesisConfig, questions=None, respond=toy_respond, round=0):
    engine = ScriptedEngine(respond)
    result = synthesize_round(engine, questions or make_questions(5), config, round=round)
    return engine, result


def small(**kw) -> SynthesisConfig:
    base = {"guidelines_per_question": 3, "hint_stages": [], "dedup_threshold": None, "max_tokens": 64,
            "plan_max_tokens": 32}
    return SynthesisConfig(**{**base, **kw})


def test_stage_major_one_call_per_stage_and_full_lineage():
    engine, result = run(small())
    assert [c["stage"] for c in engine.calls] == ["adapt", "structure", "path"]
    assert all(len(c["conversations"]) == 15 for c in engine.calls)
    assert engine.calls[0]["sampling"].temperature == 1.2 and engine.calls[0]["sampling"].top_p == 0.9
    guideline_ids = {g.id for g in load_guidelines()}
    assert len(result.candidates) == 15
    for c in result.candidates:
        assert c.method == "regenesis" and c.round == 0 and not c.hint
        assert c.guideline_id in guideline_ids and c.meta["guideline_ids"] == [c.guideline_id]
        assert c.adapted and c.structure.startswith("1.") and c.path.endswith("}")
        assert set(c.meta["finish"]) == {"adapt", "structure", "path"}
        assert c.meta["stage_tokens"] == {"adapt": 8, "structure": 7, "path": c.path_tokens}
        assert c.tokens == 8 + 7 + c.path_tokens and c.path_tokens == len(c.path.split())
    assert {c.question_id for c in result.kept} == {"q0", "q2", "q4"}
    assert all(c.verdict == Verdict.WRONG for c in result.candidates if c.question_id in ("q1", "q3"))
    subsets = {frozenset(c.guideline_id for c in result.candidates if c.question_id == q.id)
               for q in make_questions(5)}
    assert len(subsets) > 1 and all(len(s) == 3 for s in subsets)  # a seeded subset per question


def test_chunking_and_question_order_do_not_change_requests():
    def seeds(engine):
        out = {}
        for call in engine.calls:
            for conv, seed in zip(call["conversations"], call["seeds"]):
                out[(call["stage"], conv[-1]["content"])] = seed
        return out
    one, r1 = run(small(chunk_size=64))
    three, r3 = run(small(chunk_size=2), questions=list(reversed(make_questions(5))))
    assert len(one.calls) == 3 and len(three.calls) == 9
    assert seeds(one) == seeds(three)
    key = lambda c: (c.question_id, c.guideline_id)
    assert sorted((key(c), c.path, c.kept) for c in r1.candidates) == sorted((key(c), c.path, c.kept)
                                                                              for c in r3.candidates)


def test_rounds_and_base_seed_change_the_seeds():
    a, _ = run(small())
    b, _ = run(small(), round=1)
    c, _ = run(small(seed=5))
    assert a.calls[2]["seeds"] != b.calls[2]["seeds"] and a.calls[2]["seeds"] != c.calls[2]["seeds"]
    again, _ = run(small())
    assert [x["seeds"] for x in again.calls] == [x["seeds"] for x in a.calls]


def test_hint_pass_reruns_unsolved_only_and_never_stores_the_hint():
    engine, result = run(small(hint_stages=["adapt", "structure"]))
    assert [c["stage"] for c in engine.calls] == ["adapt", "structure", "path"] * 2
    hint_calls = engine.calls[3:]
    assert all(len(c["conversations"]) == 6 for c in hint_calls)  # q1, q3 x 3 guidelines
    assert all(HINT_MARK in conv[-1]["content"] for c in hint_calls[:2] for conv in c["conversations"])
    assert not any(HINT_MARK in conv[-1]["content"] for conv in hint_calls[2]["conversations"])
    assert hint_calls[0]["sampling"].temperature == 0.85
    hinted = [c for c in result.candidates if c.hint]
    assert {c.question_id for c in hinted} == {"q1", "q3"}
    assert all(c.meta["hint_stages"] == ["adapt", "structure"] and HINT_MARK not in c.path for c in hinted)
    assert all(c.kept for c in hinted)
    assert result.stats["hint"] == {"questions": 2, "recovered": 2, "candidates": 6}
    assert result.stats["questions_solved"] == 5 and result.stats["solved_main_pass"] == 3


def test_hint_in_path_stage_and_leaking_paths_are_dropped():
    leaky = lambda *a: toy_respond(*a, leak=True)
    engine, result = run(small(hint_stages=["path"]), respond=leaky)
    assert all(HINT_MARK in conv[-1]["content"] for conv in engine.calls[5]["conversations"])
    assert not any(HINT_MARK in conv[-1]["content"] for conv in engine.calls[3]["conversations"])
    hinted = [c for c in result.candidates if c.hint]
    assert hinted and all(c.verdict == Verdict.HINT_LEAK and not c.kept for c in hinted)
    assert result.stats["hint"]["recovered"] == 0 and result.stats["verdicts"]["hint_leak"] == 6


def test_released_candidate_set_adds_model_selections():
    engine, result = run(small(candidate_set="released", num_selections=2))
    assert [c["stage"] for c in engine.calls] == ["select", "adapt", "structure", "path"]
    assert len(engine.calls[0]["conversations"]) == 10
    assert len(engine.calls[1]["conversations"]) == 5 * 3 + 4 * 2  # q0's two replies named no guideline
    gl = load_guidelines()
    sel = [c for c in result.candidates if c.guideline_id.startswith("sel-")]
    assert {c.guideline_id for c in sel} == {"sel-0", "sel-1"}
    assert all(c.meta["guideline_ids"] == [gl[1].id, gl[4].id] for c in sel)
    assert all(c.meta["selection_reply"] == "2, 5" for c in sel)
    assert result.stats["skipped"] == {"selection_unparsed": 2}
    assert result.stats["guidelines"][gl[1].id]["candidates"] >= 8


def test_k_cap_dedup_and_judge_inside_a_round():
    _, result = run(small(guidelines_per_question=5, max_paths_per_question=2))
    kept = [c.question_id for c in result.kept]
    assert sorted(kept) == ["q0", "q0", "q2", "q2", "q4", "q4"]
    assert result.stats["verdicts"]["over_limit"] == 9
    _, deduped = run(small(guidelines_per_question=5, dedup_threshold=0.5))
    assert deduped.stats["verdicts"].get("duplicate", 0) > 0
    judged_engine, judged = run(small(judge=True), respond=lambda s, conv, seed, i: (
        "yes" if s == "judge" else toy_respond(s, conv, seed, i)))
    assert [c["stage"] for c in judged_engine.calls] == ["adapt", "structure", "path", "judge"]
    assert judged_engine.calls[3]["sampling"].greedy and len(judged.kept) == 9


def test_majority_vote_round_needs_no_gold():
    questions = [Question(id=q.id, task=q.task, text=q.text, answer_type=q.answer_type) for q in make_questions(3)]
    engine, result = run(small(use_gold=False, hint_stages=["adapt"]), questions=questions)
    assert len(engine.calls) == 3  # no hint pass without gold answers
    assert {c.verdict for c in result.candidates} == {Verdict.MAJORITY}
    assert result.stats["questions_solved"] == 3
    assert result.stats["majority_kept_matching_gold"] is None  # no gold answers to compare with


@pytest.mark.parametrize("order, calls", [("stage", 2), ("pipeline", 1)])
def test_stats_are_consistent_and_json(order, calls):
    """Stage-major: a call per stage and pass; pipelined: one stream for both passes."""
    _, result = run(small(hint_stages=["adapt", "structure"], order=order))
    s = json.loads(json.dumps(result.stats))
    assert s["kept"] == len(result.kept) == sum(c.kept for c in result.candidates)
    assert s["candidates"] == len(result.candidates) == sum(s["verdicts"].values())
    assert sum(s["kept_per_question"]["histogram"].values()) == s["questions"] == 5
    assert s["tokens"]["engine_calls"] == {"adapt": calls, "structure": calls, "path": calls}
    assert s["tokens"]["generated_tokens"]["path"] == sum(c.path_tokens for c in result.candidates)
    assert 0 < s["distinct_1"] <= 1 and 0 < s["distinct_2"] <= 1 and s["boxed_rate"] == 1.0
    assert s["config"]["hint_stages"] == ["adapt", "structure"] and s["method"] == "regenesis"
    assert s["majority_kept_matching_gold"] is None  # gold-filtered: nothing was chosen by vote


def test_star_rationalizes_failures_with_few_shot_prompts():
    engine, result = run(SynthesisConfig(method="star", samples_per_prompt=2, max_tokens=64, dedup_threshold=None))
    assert [c["stage"] for c in engine.calls] == ["cot", "cot"]
    assert [c["progress"].split()[-1] for c in engine.calls] == ["cot", "rationalize"]
    conv = engine.calls[0]["conversations"][0]
    assert len(conv) == 2 * len(EXEMPLARS) + 1 and conv[1]["content"] == EXEMPLARS[0][1]
    assert len(engine.calls[1]["conversations"]) == 2 and HINT_MARK in engine.calls[1]["conversations"][0][-1]["content"]
    assert all(c.method == "star" for c in result.candidates)
    assert result.stats["hint"]["recovered"] == 2 and result.stats["questions_solved"] == 5


def test_lmsi_uses_majority_vote_only():
    engine, result = run(SynthesisConfig(method="lmsi", samples_per_prompt=3, max_tokens=64, dedup_threshold=None))
    assert len(engine.calls) == 1 and engine.calls[0]["sampling"].n == 3
    assert {c.verdict for c in result.candidates} == {Verdict.MAJORITY}
    assert result.stats["kept"] == 15
    # the vote never saw the gold answers; the summary still says how many kept paths match them: the toy
    # engine answers questions with an odd first number wrongly (a unanimous, wrong majority)
    right = sum(int(re.findall(r"\d+", c.path)[0]) % 2 == 0 for c in result.kept)
    assert 0 < right < 15
    assert result.stats["majority_kept_matching_gold"] == {"checked": 15, "matching": right,
                                                           "rate": round(right / 15, 4)}


def test_gt_sft_uses_rationales_else_answers_and_counts_skips():
    qs = [Question(id="a", task="t", text="2+2?", answer_type=AnswerType.NUMERIC, answer="4", rationale="2 plus 2 is 4."),
          Question(id="b", task="t", text="Is fire hot?", answer_type=AnswerType.YES_NO, answer="yes"),
          Question(id="c", task="t", text="3+3?", answer_type=AnswerType.NUMERIC, answer="6",
                   rationale="3 and 3 make \\boxed{6}")]
    qs.append(Question(id="d", task="t", text="Unanswered?", answer_type=AnswerType.YES_NO))
    result = synthesize_round(None, qs, SynthesisConfig(method="gt", use_gold=False))
    # the paper's baseline: the rationale where there is one, the bare answer where there is none
    assert [c.path for c in result.kept] == ["2 plus 2 is 4.\nThe answer is \\boxed{4}.", "The answer is \\boxed{yes}.",
                                             "3 and 3 make \\boxed{6}"]
    assert [c.guideline_id for c in result.kept] == ["rationale", "answer", "rationale"]
    assert result.stats["skipped"] == {"no_target": 1} and result.stats["questions_solved"] == 3
    only_rationales = synthesize_round(None, qs, SynthesisConfig(method="gt", use_gold=False,
                                                                 gt_without_rationale="skip"))
    assert [c.question_id for c in only_rationales.kept] == ["a", "c"]
    assert only_rationales.stats["skipped"] == {"no_target": 2}


@pytest.mark.parametrize("kwargs, questions, message", [
    ({}, [Question(id="x", task="t", text="?", answer_type=AnswerType.NUMERIC)], "use_gold=False"),
    ({}, [], "no questions"),
    ({}, make_questions(2) + make_questions(1), "more than once"),
])
def test_bad_round_input(kwargs, questions, message):
    with pytest.raises(ValueError, match=message):
        synthesize_round(ScriptedEngine(toy_respond), questions, small(**kwargs))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "dpo"}, "choose one of"),
    ({"candidate_set": "all"}, "choose one of"),
    ({"order": "async"}, "synthesis.order=.async.: choose one of"),
    ({"hint_stages": ["answer"]}, "unknown stage"),
    ({"method": "lmsi", "use_gold": True}, "majority vote"),
    ({"method": "star", "use_gold": False}, "needs gold"),
    ({"judge": True, "use_gold": False}, "use_gold=True"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthesisConfig(**kwargs)


def test_generating_methods_need_an_engine_and_valid_guideline_count():
    with pytest.raises(ValueError, match="needs an engine"):
        synthesize_round(None, make_questions(1), small())
    with pytest.raises(ValueError, match="between 1 and 25"):
        synthesize_round(ScriptedEngine(toy_respond), make_questions(1), small(guidelines_per_question=26))


def _comparable(result):
    """Everything a round produced, except how many engine calls or streams it took."""
    stats = {**result.stats, "tokens": {k: v for k, v in result.stats["tokens"].items() if k != "engine_calls"}}
    stats["config"] = {k: v for k, v in stats["config"].items() if k != "order"}
    return [c.to_dict() for c in result.candidates], stats, result.hint_questions, result.skipped


@pytest.mark.parametrize("config", [
    {"hint_stages": ["adapt", "structure"]},
    {"candidate_set": "released", "num_selections": 2, "hint_stages": ["adapt", "structure", "path"], "judge": True,
         "dedup_threshold": 0.9, "max_paths_per_question": 2, "samples_per_prompt": 2},
    {"method": "star", "samples_per_prompt": 2, "guidelines_per_question": None},
    {"method": "lmsi", "samples_per_prompt": 3, "guidelines_per_question": None},
], ids=["paper-hint", "released-judge", "star", "lmsi"])
def test_pipelined_rounds_equal_stage_major_ones_whatever_the_finishing_order(config):
    """Per-question flows in one stream, finished in scrambled orders, give the stage-major round exactly: same
    candidates in the same order, same verdicts, stats, hint-pass questions and skips."""
    def respond(stage, conv, seed, i):  # the judge says yes to sums that end in an even digit
        if stage == "judge":
            return "yes" if int(re.findall(r"boxed\{(\d+)", conv[-1]["content"])[-1]) % 2 == 0 else "no"
        return toy_respond(stage, conv, seed, i)

    _, staged = run(small(**config, order="stage"), questions=make_questions(6), respond=respond)
    for order_seed in (0, 1):
        engine = ShuffledStream(respond, order_seed)
        result = synthesize_round(engine, make_questions(6), small(**config, order="pipeline"), round=0)
        assert not engine.calls, "a streaming engine is never called stage by stage"
        assert _comparable(result) == _comparable(staged)
    assert staged.kept


def test_a_pipelined_question_moves_on_without_waiting_for_the_others():
    """The stream interleaves stages: some question's paths finish before another's adaptation, and a hint-pass
    request goes out while main-pass requests are still pending."""
    engine = ShuffledStream(toy_respond, order_seed=3)
    synthesize_round(engine, make_questions(6), small(hint_stages=["adapt", "structure"]), round=0)
    order = engine.finished
    last = {stage: len(order) - 1 - order[::-1].index(stage) for stage in set(order)}
    assert order.index("path") < last["adapt"]
    assert order.index("adapt+hint") < last["path"]

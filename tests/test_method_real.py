"""One real synthesis round on the embedded model with the transformers engine (slow)."""

from __future__ import annotations

import json

import pytest

from regenesis_pl.method.records import Verdict
from regenesis_pl.method.synthesis import SynthesisConfig, synthesize_round
from regenesis_pl.tasks.grading import grade
from regenesis_pl.tasks.types import AnswerType, Question

# Made in the test, shaped like BIG-bench arithmetic, strategyqa and elementary_math_qa items.
QUESTIONS = [
    Question(id="add-1", task="bb_like", text="What is 23 plus 45?", answer_type=AnswerType.NUMERIC, answer="68"),
    Question(id="add-2", task="bb_like", text="What is 51 plus 16?", answer_type=AnswerType.NUMERIC, answer="67"),
    Question(id="sqa-1", task="bb_like", text="Is a whale bigger than a mouse?", answer_type=AnswerType.YES_NO,
             answer="yes"),
    Question(id="emq-1", task="bb_like", text="Tom has 3 apples and buys 4 more. How many apples does he have?",
             answer_type=AnswerType.MULTIPLE_CHOICE, answer="B", choices=("6", "7", "8", "12")),
]


@pytest.fixture(scope="module")
def engine():
    torch = pytest.importorskip("torch")
    from regenesis_pl.engines.factory import EngineConfig, build_engine

    # One thread: on the shared 2-core machine, 2 threads made decoding ~6x slower (9 s vs 61 s for 12 x 32
    # tokens) because the threads wait on each other whenever one is descheduled.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = build_engine(EngineConfig(backend="transformers", batch_size=16, max_model_len=1024), "embedded")
    yield eng
    eng.close()
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_real_round_fills_lineage_and_consistent_stats(engine):
    # The demo's choices for a 135M model (no box required, temperature 0.8, the hint in all three stages): with
    # the defaults this round kept nothing (no path boxed its answer), so the checks of kept paths checked nothing.
    config = SynthesisConfig(guidelines_per_question=3, max_tokens=128, plan_max_tokens=40, max_path_tokens=128,
                             require_boxed=False, temperature=0.8, hint_stages=["adapt", "structure", "path"], seed=7)
    result = synthesize_round(engine, QUESTIONS, config, round=0)
    main = [c for c in result.candidates if not c.hint]
    hinted = [c for c in result.candidates if c.hint]
    assert len(main) == 12
    for c in result.candidates:
        where = f"{c.question_id}/{c.guideline_id}/hint={c.hint}: {c.to_dict()}"
        assert c.guideline_id and c.meta["guideline_ids"] == [c.guideline_id], where
        assert set(c.meta["finish"]) == set(c.meta["stage_tokens"]) == {"adapt", "structure", "path"}, where
        assert 1 <= c.meta["stage_tokens"]["path"] == c.path_tokens <= 128, where
        assert c.tokens == sum(c.meta["stage_tokens"].values()), where
        assert c.verdict is not Verdict.PENDING, where
    # A sampled stage may end at once (EOS); most adapted guidelines and structures still carry text.
    assert sum(bool(c.adapted) for c in result.candidates) >= 0.75 * len(result.candidates)
    assert sum(bool(c.structure) for c in result.candidates) >= 0.75 * len(result.candidates)
    solved_main = {c.question_id for c in main if c.kept}
    assert {c.question_id for c in hinted} == {q.id for q in QUESTIONS} - solved_main
    assert len(hinted) == 3 * (len(QUESTIONS) - len(solved_main))
    by_id = {q.id: q for q in QUESTIONS}
    assert result.kept, f"the round kept nothing, so the checks of kept paths would check nothing: {result.stats}"
    for c in result.kept:  # kept paths really match the gold answer and respect the caps
        assert grade(c.path, by_id[c.question_id]).correct and c.meta["finish"]["path"] == "stop"
    s = json.loads(json.dumps(result.stats))
    assert s["candidates"] == len(result.candidates) == sum(s["verdicts"].values()), s["verdicts"]
    assert s["kept"] == len(result.kept) and s["questions_solved"] == len({c.question_id for c in result.kept})
    assert s["tokens"]["engine_calls"]["adapt"] == 1, s["tokens"]  # one stream for the main and the hint pass
    assert s["tokens"]["generated_tokens"]["path"] == sum(c.path_tokens for c in result.candidates)
    assert s["hint"]["questions"] == len(QUESTIONS) - len(solved_main)
    assert sum(v["candidates"] for v in s["guidelines"].values()) == len(result.candidates)

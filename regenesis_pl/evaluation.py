"""Zero-shot chain-of-thought evaluation: greedy generation, answer extraction, per-task accuracy and parse rate.

The prompt is the shared one (``chat.question_messages``), so the model is evaluated with exactly the prompt it
is trained on. Metrics are accumulated with torchmetrics, one pair of metrics per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torchmetrics.aggregation import MeanMetric, SumMetric

from regenesis_pl.atomic import write_json, write_jsonl, write_text
from regenesis_pl.chat import question_messages
from regenesis_pl.engines.base import Engine, SamplingConfig
from regenesis_pl.hashing import stable_seed
from regenesis_pl.layout import RunLayout
from regenesis_pl.sharding import ShardedJob
from regenesis_pl.tasks.grading import grade
from regenesis_pl.tasks.types import Question


@dataclass
class TaskScore:
    """Scores of one task. ``accuracy`` counts unparsed answers as wrong; ``parse_rate`` is the share parsed."""

    task: str
    n: int
    correct: int
    parsed: int
    accuracy: float
    parse_rate: float
    mean_tokens: float


@dataclass
class EvalResult:
    """Per-task scores and one record per question (answer, verdict, the generated text)."""

    per_task: dict[str, TaskScore]
    records: list[dict] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        scores = list(self.per_task.values())
        return sum(s.accuracy for s in scores) / len(scores) if scores else 0.0

    def to_json(self) -> dict:
        return {"per_task": {k: asdict(v) for k, v in self.per_task.items()}, "mean_accuracy": self.mean_accuracy}

    def to_markdown(self, title: str = "Evaluation") -> str:
        lines = [f"## {title}", "", "| task | n | accuracy | parse rate | mean tokens |", "|---|---:|---:|---:|---:|"]
        for s in self.per_task.values():
            lines.append(f"| {s.task} | {s.n} | {s.accuracy:.1%} | {s.parse_rate:.1%} | {s.mean_tokens:.0f} |")
        lines.append(f"| **mean** | | **{self.mean_accuracy:.1%}** | | |")
        return "\n".join(lines) + "\n"


class _TaskMetrics:
    """torchmetrics accumulators for one task."""

    def __init__(self) -> None:
        # Local metrics: with several processes the records are merged first (by question id), so a metric
        # must not also sync across ranks (its compute() would be a collective that only rank 0 enters).
        local = {"sync_on_compute": False}
        self.accuracy, self.parse_rate, self.tokens = MeanMetric(**local), MeanMetric(**local), MeanMetric(**local)
        self.correct, self.parsed = SumMetric(**local), SumMetric(**local)

    def update(self, correct: bool, parsed: bool, tokens: int) -> None:
        c, p = torch.tensor(float(correct)), torch.tensor(float(parsed))
        self.accuracy.update(c)
        self.parse_rate.update(p)
        self.tokens.update(torch.tensor(float(tokens)))
        self.correct.update(c)
        self.parsed.update(p)

    def score(self, task: str, n: int) -> TaskScore:
        return TaskScore(task=task, n=n, correct=int(self.correct.compute()), parsed=int(self.parsed.compute()),
                         accuracy=float(self.accuracy.compute()), parse_rate=float(self.parse_rate.compute()),
                         mean_tokens=float(self.tokens.compute()))


def answer_questions(engine: Engine, questions: Sequence[Question], max_tokens: int = 512,
                     progress: str | None = "evaluate") -> list[dict]:
    """Greedy zero-shot CoT answers, graded: one record per question with a gold answer (one engine call).

    Request seeds come from each question's identity (greedy ignores them): a stored answer is found again
    whatever the question's position in a later, larger, reordered or sharded task list.
    """
    gradable = [q for q in questions if q.answer is not None]
    if not gradable:
        return []
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens)
    seeds = [stable_seed("evaluate", q.task, q.id) for q in gradable]
    outputs = engine.generate([question_messages(q) for q in gradable], sampling, request_seeds=seeds,
                              progress=progress)
    if len(outputs) != len(gradable):
        raise RuntimeError(f"engine {getattr(engine, 'name', '?')} returned {len(outputs)} outputs for "
                           f"{len(gradable)} evaluation requests")
    records = []
    for q, out in zip(gradable, outputs):
        completion = out.completions[0]
        g = grade(completion.text, q)
        records.append({"task": q.task, "question_id": q.id, "gold": q.answer, "answer": g.answer,
                        "parsed": g.parsed, "correct": bool(g.correct), "tokens": completion.num_tokens,
                        "finish_reason": completion.finish_reason, "text": completion.text})
    return records


def score_records(records: Sequence[dict], skipped: int = 0) -> EvalResult:
    """Per-task accuracy, parse rate and mean length of graded records (``answer_questions`` output)."""
    metrics: dict[str, _TaskMetrics] = {}
    counts: dict[str, int] = {}
    for r in records:
        metrics.setdefault(r["task"], _TaskMetrics()).update(r["correct"], r["parsed"], r["tokens"])
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    per_task = {task: m.score(task, counts[task]) for task, m in metrics.items()}
    result = EvalResult(per_task=per_task, records=list(records))
    if skipped:
        result.records.append({"skipped_without_gold": skipped})
    return result


def evaluate_questions(engine: Engine, questions: Sequence[Question], max_tokens: int = 512,
                       progress: str | None = "evaluate", job: ShardedJob | None = None,
                       since: float | None = None) -> EvalResult | None:
    """Greedy zero-shot CoT on ``questions`` (any mix of tasks) through ``engine``, scored per task.

    Questions without a gold answer are skipped and counted (``skipped_without_gold``). With a ``job`` over
    several processes every rank answers its share; rank 0 merges the shares in question order and returns the
    result, the other ranks return None (``since``: when the work began, see ``ShardedJob.run``). The merged
    result equals a one-process evaluation (greedy; seeds from question identity).
    """
    gradable = [q for q in questions if q.answer is not None]
    skipped = len(questions) - len(gradable)
    if not gradable:
        raise ValueError(f"evaluate: none of the {len(questions)} questions has a gold answer; nothing to score")

    def merge(parts: list[list[dict]]) -> EvalResult:
        by_id = {(r["task"], r["question_id"]): r for part in parts for r in part}
        return score_records([by_id[(q.task, q.id)] for q in gradable], skipped)

    def work(mine: list[Question]) -> list[dict]:
        return answer_questions(engine, mine, max_tokens, progress)

    return merge([work(gradable)]) if job is None else job.run(gradable, work, merge, since=since)


def write_eval_report(result: EvalResult, run_dir: str, title: str = "Evaluation", meta: dict | None = None) -> None:
    """Write ``eval.json`` (scores + meta), ``eval_records.jsonl`` and ``eval.md`` into ``run_dir``."""
    layout = RunLayout(run_dir)
    write_json(layout.standalone_eval(".json"), {**result.to_json(), "meta": meta or {}})
    write_jsonl(layout.standalone_eval("_records.jsonl"), result.records)
    write_text(layout.standalone_eval(".md"), result.to_markdown(title))

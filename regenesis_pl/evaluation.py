"""Zero-shot chain-of-thought evaluation: greedy generation, answer extraction, per-task accuracy and parse rate.

The prompt is the shared one (``chat.question_messages``), so the model is evaluated with exactly the prompt it
is trained on. Metrics are accumulated with torchmetrics, one pair of metrics per task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torchmetrics.aggregation import MeanMetric, SumMetric

from regenesis_pl.chat import question_messages
from regenesis_pl.engines.base import Engine, SamplingConfig
from regenesis_pl.engines.factory import EngineConfig, build_engine, engine_settings
from regenesis_pl.method.seeding import stable_seed
from regenesis_pl.tasks.grading import grade
from regenesis_pl.tasks.registry import TaskConfig, load_questions
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
        self.accuracy, self.parse_rate, self.tokens = MeanMetric(), MeanMetric(), MeanMetric()
        self.correct, self.parsed = SumMetric(), SumMetric()

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


def evaluate_questions(
    engine: Engine,
    questions: Sequence[Question],
    max_tokens: int = 512,
    progress: str | None = "evaluate",
) -> EvalResult:
    """Greedy zero-shot CoT on ``questions`` (any mix of tasks) through ``engine``; one engine call for all.

    Questions without a gold answer are skipped and counted in the task's record list as ``skipped``.
    """
    gradable = [q for q in questions if q.answer is not None]
    skipped = len(questions) - len(gradable)
    if not gradable:
        raise ValueError(f"evaluate: none of the {len(questions)} questions has a gold answer; nothing to score")
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens)
    # Seeds from each question's identity (greedy ignores them): a stored answer is found again whatever the
    # question's position in a later, larger or reordered task list.
    seeds = [stable_seed("evaluate", q.task, q.id) for q in gradable]
    outputs = engine.generate([question_messages(q) for q in gradable], sampling, request_seeds=seeds,
                              progress=progress)
    metrics: dict[str, _TaskMetrics] = {}
    counts: dict[str, int] = {}
    records = []
    for q, out in zip(gradable, outputs):
        completion = out.completions[0]
        g = grade(completion.text, q)
        metrics.setdefault(q.task, _TaskMetrics()).update(bool(g.correct), g.parsed, completion.num_tokens)
        counts[q.task] = counts.get(q.task, 0) + 1
        records.append({"task": q.task, "question_id": q.id, "gold": q.answer, "answer": g.answer,
                        "parsed": g.parsed, "correct": bool(g.correct), "tokens": completion.num_tokens,
                        "finish_reason": completion.finish_reason, "text": completion.text})
    per_task = {task: m.score(task, counts[task]) for task, m in metrics.items()}
    result = EvalResult(per_task=per_task, records=records)
    if skipped:
        result.records.append({"skipped_without_gold": skipped})
    return result


def write_eval_report(result: EvalResult, run_dir: str, title: str = "Evaluation", meta: dict | None = None) -> None:
    """Write ``eval.json`` (scores + meta), ``eval_records.jsonl`` and ``eval.md`` into ``run_dir``."""
    from pathlib import Path

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({**result.to_json(), "meta": meta or {}}, indent=2))
    with open(out / "eval_records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in result.records)
    (out / "eval.md").write_text(result.to_markdown(title))


def run_evaluation(
    tasks: list[TaskConfig],
    model: str = "embedded",
    adapter: str | None = None,
    engine: EngineConfig | None = None,
    max_tokens: int = 512,
    run_dir: str = "runs/evaluate",
    flush_every: int = 64,
) -> EvalResult:
    """Evaluate a model (optionally with a LoRA adapter) zero-shot on a list of tasks; write a report.

    Generations go through an on-disk store under ``run_dir``, flushed every ``flush_every`` answers: rerun
    the same command after a kill and only the missing answers are generated (other weights, engine or
    settings reuse nothing).

    Args:
        tasks: Tasks to score, e.g. ``[{name: strategyqa, split: test, limit: 50}]``.
        model: "embedded" (SmolLM2-135M-Instruct, prepared on first use), a local HF folder or a hub id.
        adapter: Optional peft LoRA adapter folder served on top of ``model``.
        engine: Generation backend and its settings (vllm by default; "transformers" needs no vLLM).
        max_tokens: New-token budget per answer.
        run_dir: Where ``eval.json``, ``eval.md``, ``eval_records.jsonl`` and the generation store go.
        flush_every: Answers per durable store sub-batch (a kill loses at most one; raise it on GPUs).
    """
    import time

    from regenesis_pl.data.store import CachedEngine, prepare_store_dir

    questions = [q for cfg in tasks for q in load_questions(cfg)]
    if not questions:
        raise ValueError("evaluate: the task list gave no questions; check `tasks` (name, split, limit)")
    engine_cfg = engine or EngineConfig()
    gen = build_engine(**engine_settings(engine_cfg, model, adapter, command="evaluate"))
    try:
        store_dir = prepare_store_dir(run_dir, {"command": "evaluate", "model": model, "adapter": adapter,
                                                "weights_id": gen.weights_id, "engine": engine_cfg.backend})
        cached = CachedEngine(gen, store_dir, flush_every=flush_every)
    except BaseException:
        gen.close()
        raise
    try:
        start = time.perf_counter()
        result = evaluate_questions(cached, questions, max_tokens=max_tokens, progress="evaluate")
        seconds = time.perf_counter() - start
        store = cached.stats()
    finally:
        cached.close()  # the store, then the engine
    meta = {"model": model, "adapter": adapter, "engine": engine_cfg.backend, "max_tokens": max_tokens,
            "seconds": round(seconds, 1), "tokens_per_s": round(store["generated_tokens"] / max(seconds, 1e-9), 1),
            "store": {"hits": store["hits"], "misses": store["misses"]}, "tasks": [t.name for t in tasks]}
    write_eval_report(result, run_dir, title=f"Evaluation of {model}" + (f" + {adapter}" if adapter else ""),
                      meta=meta)
    print(result.to_markdown(f"Evaluation ({engine_cfg.backend}, {seconds:.0f} s, {meta['tokens_per_s']} "
                             f"generated tok/s, {store['hits']} answers reused from the store)"))
    print(f"report: {run_dir}/eval.md")
    return result

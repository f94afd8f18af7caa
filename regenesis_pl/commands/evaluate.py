"""``regenesis evaluate``: zero-shot chain-of-thought accuracy and parse rate of a model on a list of tasks."""

from __future__ import annotations

import time

from regenesis_pl.engines.factory import EngineConfig, build_engine
from regenesis_pl.evaluation import EvalResult, evaluate_questions, write_eval_report
from regenesis_pl.hashing import digest
from regenesis_pl.layout import RunLayout
from regenesis_pl.round.cached_engine import through_store
from regenesis_pl.round.store import prepare_store_dir
from regenesis_pl.run_lock import claimed
from regenesis_pl.sharding import ShardedJob, local_device, process_shard
from regenesis_pl.tasks.registry import TaskConfig, load_questions


def run_evaluation(
    tasks: list[TaskConfig],
    model: str = "embedded",
    adapter: str | None = None,
    engine: EngineConfig | None = None,
    max_tokens: int = 512,
    run_dir: str = "runs/evaluate",
    flush_every: int | None = None,
) -> EvalResult | None:
    """Evaluate a model (optionally with a LoRA adapter) zero-shot on a list of tasks; write a report.

    Generations go through an on-disk store under ``run_dir``, each answer stored as it finishes: rerun
    the same command after a kill and only the missing answers are generated (other weights, engine or
    settings reuse nothing). Launched with several processes (``torchrun --nproc_per_node N``), every rank
    answers its share of the questions on its own device and rank 0 writes the merged report.

    Args:
        tasks: Tasks to score, e.g. ``[{name: strategyqa, split: test, limit: 50}]``.
        model: "embedded" (SmolLM2-135M-Instruct, prepared on first use), a local HF folder or a hub id.
        adapter: Optional peft LoRA adapter folder served on top of ``model``.
        engine: Generation backend and its settings (vllm by default; "transformers" needs no vLLM).
        max_tokens: New-token budget per answer.
        run_dir: Where ``eval.json``, ``eval.md``, ``eval_records.jsonl`` and the generation store go.
        flush_every: At most this many answers per engine call; None (default): all in one call. Every answer
            is stored the moment it finishes either way.
    """
    if not tasks:
        raise ValueError("evaluate: `tasks` is empty; list at least one task, e.g. --tasks '[{name: arithmetic}]'")
    if max_tokens < 1:
        raise ValueError(f"evaluate: max_tokens={max_tokens} must be >= 1")
    questions = [q for cfg in tasks for q in load_questions(cfg)]
    if not questions:
        raise ValueError("evaluate: the task list gave no questions; check `tasks` (name, split, limit)")
    engine_cfg = engine or EngineConfig()
    shard = process_shard()
    layout = RunLayout(run_dir)
    with claimed(run_dir):  # a directory another job is writing is refused in one line, before the engine starts
        gen = build_engine(engine_cfg, model, adapter, device=local_device())
        try:
            store_dir = prepare_store_dir(run_dir, {"command": "evaluate", "model": model, "adapter": adapter,
                                                    "weights_id": gen.weights_id, "engine": engine_cfg.backend,
                                                    "dtype": engine_cfg.dtype})
            tag = digest([gen.weights_id, engine_cfg.backend, engine_cfg.dtype, max_tokens,
                          [q.to_dict() for q in questions], shard.world], 12)
            job = ShardedJob(shard, part=lambda rank: layout.evaluation_shard("evaluate", tag, rank), what="evaluate",
                             failures=layout.failures)
            start = time.perf_counter()
            with through_store(gen, store_dir, flush_every, shard.name) as cached:
                result = evaluate_questions(cached, questions, max_tokens=max_tokens, progress="evaluate", job=job)
            seconds = time.perf_counter() - start
            store = cached.stats()
        finally:
            gen.close()
    if result is None:
        print(f"evaluate: rank {shard.rank} answered its share; rank 0 writes the report")
        return None
    meta = {"model": model, "adapter": adapter, "engine": engine_cfg.backend, "max_tokens": max_tokens,
            "seconds": round(seconds, 1), "tokens_per_s": round(store["generated_tokens"] / max(seconds, 1e-9), 1),
            "store": {"hits": store["hits"], "misses": store["misses"]}, "tasks": [t.name for t in tasks],
            "processes": shard.world}
    write_eval_report(result, run_dir, title=f"Evaluation of {model}" + (f" + {adapter}" if adapter else ""),
                      meta=meta)
    print(result.to_markdown(f"Evaluation ({engine_cfg.backend}, {seconds:.0f} s, {meta['tokens_per_s']} "
                             f"generated tok/s, {store['hits']} answers reused from the store)"))
    print(f"report: {layout.standalone_eval('.md')}")
    return result

"""One synthesis round into a run directory: ``regenesis synthesize`` and the DataModule share this path.

Layout of ``<run_dir>/round-<k>/``::

    meta.json             what the round's generations depend on (method, round, model, weights, guidelines,
                          generation settings); a different meta gets its own sub-store
    store-<hash>/         generations.jsonl: every engine reply, appended durably (resume after any kill)
    candidates.jsonl      every candidate with its lineage and verdict
    kept.jsonl            the SFT records (chat messages + lineage) of the kept paths
    summary.json / .md    coverage, hint recoveries, acceptance per guideline, diversity, tokens, speed, store

Filter-only settings (judge, length cap, per-question cap, dedup, agreement threshold, chunking) are not part
of the meta: changing them re-filters the stored generations without generating anything again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from regenesis_pl.data.export import sft_records, write_candidates, write_sft_jsonl
from regenesis_pl.data.store import CachedEngine, prepare_store_dir
from regenesis_pl.engines.base import Engine
from regenesis_pl.engines.factory import EngineConfig, build_engine, engine_settings
from regenesis_pl.method.guidelines import load_guidelines
from regenesis_pl.method.synthesis import RoundResult, SynthesisConfig, synthesize_round
from regenesis_pl.tasks.registry import TaskConfig, load_questions
from regenesis_pl.tasks.types import Question

# SynthesisConfig fields that only decide which generated paths are kept (not what is generated).
FILTER_ONLY = ("require_boxed", "use_gold", "min_agreement", "judge", "max_path_tokens", "max_paths_per_question",
               "dedup_threshold", "chunk_size")


class EmptyRoundError(RuntimeError):
    """A round kept no reasoning path at all (the CLI exits with code 2)."""

    exit_code = 2


def round_dir(run_dir: str | Path, round: int) -> Path:
    """``<run_dir>/round-<round>``: where one round's store, candidates, SFT records and summary live."""
    return Path(run_dir) / f"round-{round}"


def guideline_set_hash(synthesis: SynthesisConfig) -> str | None:
    """Hash of the seed guidelines a ReGenesis round uses (ids and texts); None for the baselines."""
    if synthesis.method != "regenesis":
        return None
    items = [[g.id, g.text] for g in load_guidelines(synthesis.guideline_file)]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def synthesis_meta(engine: Engine | None, questions: list[Question], synthesis: SynthesisConfig, round: int,
                   model: str | None = None, adapter: str | None = None) -> dict[str, Any]:
    """What a round's generations depend on: method, round, model, served weights, guideline set, settings."""
    config = {k: v for k, v in asdict(synthesis).items() if k not in FILTER_ONLY}
    return {
        "method": synthesis.method,
        "round": round,
        "model": model,
        "adapter": adapter,
        "backend": getattr(engine, "name", None),
        "weights_id": engine.weights_id if engine is not None else None,
        "guidelines": guideline_set_hash(synthesis),
        "tasks": sorted({q.task for q in questions}),
        "config": config,
    }


def synthesize_to_store(engine: Engine | None, questions: list[Question], synthesis: SynthesisConfig,
                        round: int = 0, run_dir: str | Path = "runs/synthesize", flush_every: int = 32,
                        require_kept: bool = False, model: str | None = None, adapter: str | None = None,
                        say=print) -> RoundResult:
    """Synthesize one round through the on-disk store and write its files; the engine stays open.

    Every engine reply is stored before the next sub-batch starts, so after a crash or a kill the same call
    regenerates only what is missing. ``result.stats`` gains ``store``, ``speed`` and ``files`` entries.

    Args:
        engine: A live engine (the store wraps it); None only for method="gt".
        questions: The round's questions (unique ids).
        synthesis: Method, sampling and filter settings.
        round: Self-improvement round (part of the seeds, the lineage and the directory name).
        run_dir: Run directory; this round writes under ``<run_dir>/round-<round>``.
        flush_every: Requests per durable sub-batch (raise on GPUs so the engine batches fully).
        require_kept: Raise ``EmptyRoundError`` when no path is kept.
        model: Model name for the meta and the summary.
        adapter: Adapter folder for the meta and the summary.
        say: Where one-line notices go.

    Raises:
        EmptyRoundError: ``require_kept`` and the round kept nothing (the files are written first).
    """
    out_dir = round_dir(run_dir, round)
    meta = synthesis_meta(engine, questions, synthesis, round, model, adapter)
    store_dir = prepare_store_dir(out_dir, meta, say=say)
    cached = CachedEngine(engine, store_dir, flush_every=flush_every) if engine is not None else None
    start = time.perf_counter()
    try:
        result = synthesize_round(cached, questions, synthesis, round=round)
    finally:
        if cached is not None:
            cached.store.close()
    seconds = time.perf_counter() - start
    store = cached.stats() if cached is not None else {"hits": 0, "misses": 0, "generated_tokens": 0}
    result.stats["store"] = store
    result.stats["speed"] = _speed(result, store, seconds)
    files = {"candidates": str(write_candidates(result.candidates, out_dir / "candidates.jsonl")),
             "kept": str(write_sft_jsonl(sft_records(result.kept, questions), out_dir / "kept.jsonl")),
             "summary": str(out_dir / "summary.json"), "store": str(store_dir)}
    result.stats["files"] = files
    result.stats["meta"] = meta
    (out_dir / "summary.json").write_text(json.dumps(result.stats, indent=2, sort_keys=False))
    (out_dir / "summary.md").write_text(summary_markdown(result.stats))
    if not result.kept:
        message = empty_round_message(result.stats)
        if require_kept:
            raise EmptyRoundError(message)
        say(f"warning: {message}")
    return result


def _speed(result: RoundResult, store: dict, seconds: float) -> dict[str, float]:
    generated = store.get("generated_tokens", 0)
    engine_seconds = store.get("generate_seconds", 0.0)
    return {
        "wall_seconds": round(seconds, 2),
        "paths_per_s": round(len(result.candidates) / seconds, 3) if seconds else 0.0,
        "tokens_per_s": round(generated / seconds, 1) if seconds else 0.0,
        "engine_tokens_per_s": round(generated / engine_seconds, 1) if engine_seconds else 0.0,
    }


def empty_round_message(stats: dict) -> str:
    """One line on a round that kept nothing: the counts and what to try."""
    verdicts = ", ".join(f"{k}={v}" for k, v in stats.get("verdicts", {}).items()) or "none"
    hint = stats.get("hint", {})
    return (f"round {stats.get('round')} ({stats.get('method')}) kept 0 paths: {stats.get('questions')} questions, "
            f"{stats.get('candidates')} candidates (verdicts: {verdicts}; answer parse rate "
            f"{stats.get('answer_parse_rate', 0):.0%}), hint pass on {hint.get('questions', 0)} questions recovered "
            f"{hint.get('recovered', 0)}; try more questions, more guidelines or samples, a larger max_tokens, "
            "or a stronger model")


def summary_markdown(stats: dict) -> str:
    """The round summary as Markdown (the same figures as ``summary.json``)."""
    speed, store, tokens = stats.get("speed", {}), stats.get("store", {}), stats.get("tokens", {})
    hint = stats.get("hint", {})
    rows = [
        ("questions", stats.get("questions")),
        ("solved (>= 1 kept path)", f"{stats.get('questions_solved')} ({stats.get('solved_rate', 0):.1%})"),
        ("solved in the main pass", stats.get("solved_main_pass")),
        ("hint pass: questions / recovered", f"{hint.get('questions', 0)} / {hint.get('recovered', 0)}"),
        ("candidates", stats.get("candidates")),
        ("answer parse rate", f"{stats.get('answer_parse_rate', 0):.1%}"),
        ("kept paths", stats.get("kept")),
        ("kept paths per question (mean / max)",
         f"{stats.get('kept_per_question', {}).get('mean')} / {stats.get('kept_per_question', {}).get('max')}"),
        *([("majority-voted kept paths matching the unused gold answer",
            f"{gold['matching']} / {gold['checked']} ({gold['rate']:.1%})")]
          if (gold := stats.get("majority_kept_matching_gold")) else []),
        ("distinct-1 / distinct-2 of kept paths", f"{stats.get('distinct_1')} / {stats.get('distinct_2')}"),
        ("generated tokens (all stages)", tokens.get("total_generated_tokens")),
        ("wall time (s)", speed.get("wall_seconds")),
        ("paths/s", speed.get("paths_per_s")),
        ("generated tokens/s", speed.get("tokens_per_s")),
        ("store hits / misses", f"{store.get('hits')} / {store.get('misses')}"),
    ]
    lines = [f"## Synthesis round {stats.get('round')} ({stats.get('method')})", "", "| | |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    verdicts = stats.get("verdicts", {})
    if verdicts:
        lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in verdicts.items())]
    guidelines = stats.get("guidelines", {})
    if guidelines:
        lines += ["", "| guideline | candidates | accepted | kept | accept rate |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {gid} | {row['candidates']} | {row['accepted']} | {row['kept']} | {row['accept_rate']:.1%} |"
                  for gid, row in guidelines.items()]
    return "\n".join(lines) + "\n"


def run_synthesis(
    task: TaskConfig,
    model: str = "embedded",
    adapter: str | None = None,
    engine: EngineConfig | None = None,
    synthesis: SynthesisConfig | None = None,
    round: int = 0,
    run_dir: str = "runs/synthesize",
    flush_every: int = 32,
    require_kept: bool = True,
) -> dict:
    """Synthesize and filter one round of reasoning paths for a task; resumable after any interruption.

    Writes ``<run_dir>/round-<round>/`` (store, ``candidates.jsonl``, ``kept.jsonl``, ``summary.json``,
    ``summary.md``). Rerunning the same command reuses every stored generation and generates only what is
    missing; a run directory reused with other generation settings says so and reuses nothing.

    Args:
        task: The training questions, e.g. ``{name: strategyqa, split: train, limit: 64}``.
        model: "embedded" (SmolLM2-135M-Instruct, prepared on first use), a local HF folder or a hub id.
        adapter: Optional peft LoRA adapter folder served on top of ``model`` (e.g. the previous round's).
        engine: Generation backend and its settings (vLLM by default; "transformers" needs no vLLM).
        synthesis: Method (regenesis, star, lmsi, gt), sampling, hint and filter settings.
        round: Self-improvement round (part of every request seed and of the output folder name).
        run_dir: Run directory; the round writes under ``<run_dir>/round-<round>``.
        flush_every: Requests per durable store sub-batch: a kill loses at most one; raise it on GPUs
            (e.g. 256) so the engine sees full batches.
        require_kept: Fail (``EmptyRoundError``, exit code 2) when no path survives filtering and hints.

    Returns:
        The round summary (as in ``summary.json``).
    """
    synthesis = synthesis or SynthesisConfig()
    if task.split == "test" and (task.path is None or "{split}" in task.path):
        print(f"warning: synthesizing training paths from the test split of {task.name!r}; "
              "set task.split: train unless this is intended")
    questions = load_questions(task)
    if not questions:
        raise ValueError(f"synthesize: task {task.name!r} gave no questions; check name, split and limit")
    gen = None
    if synthesis.method != "gt":
        gen = build_engine(**engine_settings(engine or EngineConfig(), model, adapter, command="synthesize"))
    try:
        result = synthesize_to_store(gen, questions, synthesis, round=round, run_dir=run_dir,
                                     flush_every=flush_every, require_kept=require_kept, model=model,
                                     adapter=adapter)
    finally:
        if gen is not None:
            gen.close()
    stats = result.stats
    print(summary_markdown(stats))
    print(f"kept {stats['kept']} paths -> {stats['files']['kept']}")
    return stats

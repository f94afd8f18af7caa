"""One synthesis round into a run directory, by every rank: ``regenesis synthesize`` and the fit share this.

See ``regenesis_pl.layout`` for the files of ``<run_dir>/round-<k>/``. With N processes rank r synthesizes its
shard of the questions (``sharding.Shard``) through its own store file and writes its part of the round to
``shards/<tag>/rank-<r>.json``; rank 0 waits for every part (polling files, not a collective), merges them by
question id (``method.synthesis.merge_shards``) and writes ``candidates.jsonl``, ``kept.jsonl`` and the
summary; the other ranks wait for its ``merged.json``. The tag hashes everything the parts depend on (the
generation meta, every synthesis setting, the number of ranks), so parts of another configuration are never
merged. A part or merge left by an identical earlier run (same tag) holds the same content, since every
generation is deterministic given its settings and seed; a rerun rewrites it from the store (all hits).

Filter-only settings (judge, length cap, per-question cap, dedup, agreement threshold, chunking) are not part
of the store's meta: changing them re-filters the stored generations without generating anything again.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from regenesis_pl.atomic import read_json, write_json, write_jsonl, write_text
from regenesis_pl.engines.base import Engine
from regenesis_pl.hashing import digest
from regenesis_pl.layout import RunLayout
from regenesis_pl.method.guidelines import load_guidelines
from regenesis_pl.method.ledger import TokenLedger
from regenesis_pl.method.records import Candidate
from regenesis_pl.method.synthesis import (
    RoundResult,
    SynthesisConfig,
    check_questions,
    merge_shards,
    synthesize_round,
)
from regenesis_pl.round.cached_engine import through_store
from regenesis_pl.round.sft_records import load_candidates, sft_records
from regenesis_pl.round.store import prepare_store_dir
from regenesis_pl.sharding import DEFAULT_WAIT_MINUTES, Shard, ShardedJob
from regenesis_pl.tasks.types import Question

# SynthesisConfig fields that never change what is generated: which generated paths are kept, and how the
# requests are grouped and ordered.
NOT_GENERATION = ("require_boxed", "use_gold", "min_agreement", "judge", "max_path_tokens", "max_paths_per_question",
                  "dedup_threshold", "chunk_size", "order")


class EmptyRoundError(RuntimeError):
    """A round kept no reasoning path at all (the CLI exits with code 2)."""

    exit_code = 2


def guideline_set_hash(synthesis: SynthesisConfig) -> str | None:
    """Hash of the seed guidelines a ReGenesis round uses (ids and texts); None for the baselines."""
    if synthesis.method != "regenesis":
        return None
    return digest([[g.id, g.text] for g in load_guidelines(synthesis.guideline_file)])


def synthesis_meta(questions: list[Question], synthesis: SynthesisConfig, round: int, model: str | None = None,
                   served: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a round's generations depend on: method, round, model, the served weights (by content, not by
    folder name: a resumed fit pushes the same adapter to a new folder), the engine's backend and dtype, the
    guideline set and the generation settings.

    Args:
        served: ``{"backend", "dtype", "weights_id"}`` of the engine (rank 0's in a fit, so every rank, also one
            without an engine, names the round alike); None for method="gt" (no engine).
    """
    config = {k: v for k, v in asdict(synthesis).items() if k not in NOT_GENERATION}
    served = served or {}
    return {
        "method": synthesis.method,
        "round": round,
        "model": model,
        "backend": served.get("backend"),
        "dtype": served.get("dtype"),
        "weights_id": served.get("weights_id"),
        "guidelines": guideline_set_hash(synthesis),
        "tasks": sorted({q.task for q in questions}),
        "config": config,
    }


def served_by(engine: Engine | None) -> dict[str, Any] | None:
    """The ``served`` description of a live engine (see ``synthesis_meta``)."""
    if engine is None:
        return None
    return {"backend": engine.name, "dtype": getattr(engine, "dtype", None), "weights_id": engine.weights_id}


def synthesize_to_store(engine: Engine | None, questions: list[Question], synthesis: SynthesisConfig,
                        round: int = 0, run_dir: str | Path = "runs/synthesize", flush_every: int | None = None,
                        require_kept: bool = False, model: str | None = None, adapter: str | None = None,
                        shard: Shard | None = None, wait_minutes: float = DEFAULT_WAIT_MINUTES,
                        served: dict[str, Any] | None = None, run_token: str = "", say=print) -> RoundResult:
    """Synthesize one round through the on-disk store and write its files; the engine stays open.

    Every rank calls this with the same ``questions`` (all of the round's) and its own engine and ``shard``.
    Every engine reply is stored before the next sub-batch starts, so after a crash or a kill the same call
    regenerates only what is missing. ``result.stats`` gains ``store``, ``speed``, ``shards`` and ``files``.

    Args:
        engine: This rank's live engine (the store wraps it); None only for method="gt".
        questions: All of the round's questions (unique ids), in the same order on every rank.
        synthesis: Method, sampling and filter settings.
        round: Self-improvement round (part of the seeds, the lineage and the directory name).
        run_dir: Run directory; this round writes under ``<run_dir>/round-<round>``.
        flush_every: At most this many requests per engine call of a stage-major round; None: each stage in one
            call. A pipelined round streams its requests. Completions are stored the moment they finish either way.
        require_kept: Raise ``EmptyRoundError`` when no path is kept.
        model: Model name for the meta and the summary.
        adapter: Adapter folder served (for the summary; the store is keyed by the weights' content).
        shard: This process's share (default: a single process).
        wait_minutes: How long rank 0 waits for the other ranks' parts (and they for the merge).
        served: Backend, dtype and weights id of the engine (``served_by``; a fit passes rank 0's).
        run_token: A token every rank of this run shares (a fit broadcasts one from rank 0), so parts and
            merges left by an earlier run are never taken for this run's.
        say: Where one-line notices go.

    Returns:
        The merged round (the same on every rank).

    Raises:
        EmptyRoundError: ``require_kept`` and the round kept nothing (the files are written first).
    """
    shard = shard or Shard()
    check_questions(questions, synthesis)  # on every rank, before any work: no rank may fail alone later
    layout = RunLayout(run_dir)
    served = served if served is not None else served_by(engine)
    meta = synthesis_meta(questions, synthesis, round, model, served)
    tag = digest([meta, asdict(synthesis), [q.to_dict() for q in questions], shard.world, run_token], 12)
    since = time.time()
    layout.create()  # a run directory that cannot exist fails here, in one line
    job = ShardedJob(shard, part=lambda rank: layout.round_shard(round, tag, rank), what=f"round {round} synthesis",
                     failures=layout.failures, wait_minutes=wait_minutes, done=layout.round_merged(round, tag),
                     say=say)

    def work(mine: list[Question]) -> dict:
        store_dir = prepare_store_dir(layout.round_dir(round), meta, say=say)
        return _synthesize_part(engine, mine, synthesis, round, store_dir, flush_every, shard.name)

    def merge(parts: list[dict]) -> RoundResult:
        return _write_round(layout, round, questions, synthesis, meta, parts, layout.round_merged(round, tag), adapter)

    result = job.run(questions, work, merge, since=since)
    if result is None:  # rank 0 holds the merged round; the others read what it wrote
        result = _read_round(layout, round)
    if not result.kept:
        message = empty_round_message(result.stats)
        if require_kept:
            raise EmptyRoundError(message)
        if shard.is_first:
            say(f"warning: {message}")
    return result


def _synthesize_part(engine, mine, synthesis, k, store_dir, flush_every, shard_name) -> dict:
    """This rank's questions of round k through its store file: its part of the round (see ``_write_round``)."""
    start = time.perf_counter()
    with through_store(engine, store_dir, flush_every, shard_name) as cached:
        result = synthesize_round(cached, mine, synthesis, round=k) if mine else None
    store = cached.stats() if cached is not None else {"hits": 0, "misses": 0, "generated_tokens": 0}
    return {
        "candidates": [c.to_dict() for c in result.candidates] if result else [],
        "ledger": result.ledger.to_dict() if result else {},
        "hint_questions": result.hint_questions if result else [],
        "skipped": result.skipped if result else {},
        "store": store, "seconds": round(time.perf_counter() - start, 3),
    }


def _write_round(layout: RunLayout, k: int, questions, synthesis, meta, raw_parts: list[dict], merged_path,
                 adapter) -> RoundResult:
    """Rank 0: merge the parts by question id, write the round's files (``merged.json`` last), return it."""
    parts, stores, seconds = [], [], []
    for raw in raw_parts:
        candidates = [Candidate.from_dict(c) for c in raw["candidates"]]
        parts.append(RoundResult(candidates=candidates, kept=[c for c in candidates if c.kept], stats={},
                                 ledger=TokenLedger.from_dict(raw["ledger"]), hint_questions=raw["hint_questions"],
                                 skipped=raw["skipped"]))
        stores.append(raw["store"])
        seconds.append(raw["seconds"])
    result = merge_shards(parts, questions, synthesis, round=k)
    store = _sum_stores(stores)
    stats = result.stats
    stats["store"] = store
    stats["speed"] = _speed(result, store, max(seconds))  # ranks run side by side: the slowest one's time
    stats["shards"] = {"processes": len(raw_parts), "seconds": seconds}
    stats["files"] = {"candidates": str(layout.candidates(k)), "kept": str(layout.kept(k)),
                      "summary": str(layout.summary(k)), "store": store.get("store")}
    stats["meta"] = meta
    stats["adapter"] = adapter
    write_jsonl(layout.candidates(k), (c.to_dict() for c in result.candidates))
    write_jsonl(layout.kept(k), sft_records(result.kept, questions))
    write_json(layout.summary(k), stats)
    write_text(layout.summary(k, ".md"), summary_markdown(stats))
    write_json(merged_path, {"round": k, "kept": len(result.kept), "processes": len(raw_parts)})
    return result


def _sum_stores(stores: list[dict]) -> dict:
    out: dict[str, Any] = {"store": stores[0].get("store") if stores else None}
    for key in ("hits", "misses", "stored", "skipped_lines", "generated_tokens", "cached_tokens", "prefix_prompt_tokens",
                "prefix_cached_tokens"):
        out[key] = sum(s.get(key, 0) for s in stores)
    out["generate_seconds"] = round(max((s.get("generate_seconds", 0.0) for s in stores), default=0.0), 3)
    return out


def _read_round(layout: RunLayout, k: int) -> RoundResult:
    """The merged round as a rank other than 0 reads it back from the files rank 0 wrote."""
    candidates = load_candidates(layout.candidates(k))
    return RoundResult(candidates=candidates, kept=[c for c in candidates if c.kept],
                       stats=read_json(layout.summary(k), "round summary"))


def _speed(result: RoundResult, store: dict, seconds: float) -> dict[str, float]:
    generated = store.get("generated_tokens", 0)
    engine_seconds = store.get("generate_seconds", 0.0)
    return {
        "wall_seconds": round(seconds, 2),
        "paths_per_s": round(len(result.candidates) / seconds, 3) if seconds else 0.0,
        "tokens_per_s": round(generated / seconds, 1) if seconds else 0.0,
        "engine_tokens_per_s": round(generated / engine_seconds, 1) if engine_seconds else 0.0,
        # share of the prompt tokens sent to the engine that its prefix cache served (vLLM; 0 when none sent)
        "prefix_cache_hit_rate": round(store.get("prefix_cached_tokens", 0) / store["prefix_prompt_tokens"], 4)
        if store.get("prefix_prompt_tokens") else 0.0,
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
        *([("engine prefix-cache hit rate (prompt tokens)",
            f"{speed['prefix_cache_hit_rate']:.1%} of {store['prefix_prompt_tokens']}")]
          if store.get("prefix_prompt_tokens") else []),
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

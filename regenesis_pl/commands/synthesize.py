"""``regenesis synthesize``: one round of reasoning paths (ReGenesis or a baseline) into a run directory."""

from __future__ import annotations

from regenesis_pl.engines.factory import EngineConfig, build_engine
from regenesis_pl.method.synthesis import SynthesisConfig
from regenesis_pl.round.synthesize import summary_markdown, synthesize_to_store
from regenesis_pl.run_lock import claimed
from regenesis_pl.sharding import local_device, process_shard
from regenesis_pl.tasks.registry import TaskConfig, load_questions


def run_synthesis(
    task: TaskConfig,
    model: str = "embedded",
    adapter: str | None = None,
    engine: EngineConfig | None = None,
    synthesis: SynthesisConfig | None = None,
    round: int = 0,
    run_dir: str = "runs/synthesize",
    flush_every: int | None = None,
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
        flush_every: At most this many requests per engine call; None (default): each stage in one call.
            Every completion is stored the moment it finishes, so a kill loses only requests still running.
        require_kept: Fail (``EmptyRoundError``, exit code 2) when no path survives filtering and hints.

    Returns:
        The round summary (as in ``summary.json``).

    Launched with several processes (``torchrun --nproc_per_node N``), every rank synthesizes its share of
    the questions on its own device and rank 0 merges them into the same files one process would write.
    """
    synthesis = synthesis or SynthesisConfig()
    if task.split == "test" and (task.path is None or "{split}" in task.path):
        print(f"warning: synthesizing training paths from the test split of {task.name!r}; "
              "set task.split: train unless this is intended")
    questions = load_questions(task)
    if not questions:
        raise ValueError(f"synthesize: task {task.name!r} gave no questions; check name, split and limit")
    shard = process_shard()
    with claimed(run_dir):  # a directory another job is writing is refused in one line, before the engine starts
        gen = None
        if synthesis.method != "gt":
            gen = build_engine(engine or EngineConfig(), model, adapter, device=local_device())
        try:
            result = synthesize_to_store(gen, questions, synthesis, round=round, run_dir=run_dir,
                                         flush_every=flush_every, require_kept=require_kept, model=model,
                                         adapter=adapter, shard=shard)
        finally:
            if gen is not None:
                gen.close()
    stats = result.stats
    if not shard.is_first:
        return stats
    print(summary_markdown(stats))
    print(f"kept {stats['kept']} paths -> {stats['files']['kept']}")
    return stats

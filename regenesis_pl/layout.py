"""The one layout of a run directory: every file a run writes is named here, and nowhere else.

::

    <run_dir>/
      round-<k>/                  one self-improvement round (also what `regenesis synthesize` writes)
        meta.json                 what the round's generations depend on (a new meta gets a new store)
        store-<hash>/             generations.jsonl (one process) or generations.rank-<r>.jsonl (rank r)
        shards/<tag>/rank-<r>.json  rank r's part of the round: candidates, token ledger, store counters
        shards/<tag>/merged.json  rank 0 merged the parts (tag: a hash of what the parts depend on)
        candidates.jsonl          every candidate of the round with its lineage and verdict (merged by id)
        kept.jsonl                SFT records of the kept paths
        summary.json, summary.md  the round's statistics
        fit_round.json            marker: the round is complete for this fit configuration
      adapters/round-<k>-step-<s>/   LoRA adapters pushed to the engines (kept: small)
      weights/round-<k>-step-<s>/    full weights pushed to the engines (only the newest kept)
      eval/
        meta.json, store-<hash>/  the evaluation generation store (keys include the served weights)
        <name>.json               one evaluation: base, round-<k>, round-<k>-step-<s>, validate, test
        <name>_records.jsonl      its per-question records
        shards/<name>-<tag>/rank-<r>.json  rank r's answers before the merge
        stopped.json              the eval-gating decision, when patience stopped the fit
      export/round-<k>[-merged]/  each round's weights as a Hugging Face folder; export/best.json
      failed/rank-<r>             why rank r stopped (the others stop waiting for its files)
      checkpoints/, logs/, engine_timings.json, report.md, plots/
      .in-use                     locked by the running job's first process (its id inside; see run_lock.py)

``regenesis evaluate`` writes ``eval.json``, ``eval.md`` and ``eval_records.jsonl`` at the top of its run
directory, beside its store. Rounds are 0-based and always spelled ``round-<k>``.

A study directory (``regenesis study``) holds one ordinary run directory per arm and seed::

    <study_dir>/
      base/                       the base model's evaluation (a `regenesis evaluate` run directory)
      <arm>/seed-<s>/             one fit: the run layout above, plus (also in base/)
        study_config.yaml         the fit's full configuration (rerun it by hand with `regenesis fit --config`)
        study.log                 the fit's console output
        study_attempts.json       each attempt's start, process id and seconds so far (a killed one still counts)
        study_run.json            marker: the fit finished with this configuration (read back, never redone)
      study.json, report.md, plots/   the comparison
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROUND_PATTERN = re.compile(r"round-(\d+)(?:-step-(\d+))?")


def round_name(k: int, step: int | None = None) -> str:
    """``round-<k>``, or ``round-<k>-step-<s>`` for something made at step s inside round k."""
    return f"round-{k}" if step is None else f"round-{k}-step-{step}"


def parse_round_name(name: str) -> tuple[int, int | None] | None:
    """``(k, step)`` of a ``round_name``; None for any other name."""
    match = ROUND_PATTERN.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), (int(match.group(2)) if match.group(2) is not None else None)


def shard_name(rank: int, world: int) -> str:
    """The suffix of rank r's files: empty for one process (the plain file names), else ``rank-<r>``."""
    return "" if world <= 1 else f"rank-{rank}"


def make_dir(path: str | os.PathLike, what: str = "run directory") -> Path:
    """Create ``path`` (and its parents) or fail in one line that names it and says what to do."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"{what} {path} cannot be created ({err.strerror}); choose another run_dir or "
                                 "fix its parent folder") from None
    return path


class RunLayout:
    """Paths of one run directory (nothing is created here but by ``create``)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.root = Path(run_dir)

    def create(self) -> Path:
        """Create the run directory (a one-line error when it cannot be)."""
        return make_dir(self.root)

    # ---------------------------------------------------------------------------------------------- rounds
    def round_dir(self, k: int) -> Path:
        return self.root / round_name(k)

    def round_marker(self, k: int) -> Path:
        return self.round_dir(k) / "fit_round.json"

    def candidates(self, k: int) -> Path:
        return self.round_dir(k) / "candidates.jsonl"

    def kept(self, k: int) -> Path:
        return self.round_dir(k) / "kept.jsonl"

    def summary(self, k: int, suffix: str = ".json") -> Path:
        return self.round_dir(k) / f"summary{suffix}"

    def round_shard(self, k: int, tag: str, rank: int) -> Path:
        """Rank r's part of round k, under the tag of the settings it was made with."""
        return self.round_dir(k) / "shards" / tag / f"rank-{rank}.json"

    def round_merged(self, k: int, tag: str) -> Path:
        """Written by rank 0 once the parts of round k (made with ``tag``'s settings) are merged."""
        return self.round_dir(k) / "shards" / tag / "merged.json"

    def rounds_with_summary(self) -> dict[int, Path]:
        """Round number -> ``summary.json`` of every round that has one."""
        return _by_round(self.root.glob("round-*/summary.json"), lambda p: p.parent.name)

    @property
    def failures(self) -> Path:
        """``failed/rank-<r>``: why rank r stopped (the other ranks stop waiting for it)."""
        return self.root / "failed"

    # ------------------------------------------------------------------------------------ pushed weights
    def pushed(self, adapter: bool, k: int | None, step: int, stage: str = "fit") -> Path:
        """Folder of a weight push: ``adapters/`` (LoRA) or ``weights/`` (full), named by round and step
        while fitting and by the stage (``validate``, ``test``) otherwise."""
        name = round_name(k, step) if stage == "fit" and k is not None else stage
        return self.root / ("adapters" if adapter else "weights") / name

    @property
    def served_base(self) -> Path:
        """QLoRA: the 4-bit base the adapter trains against, dequantized for the engines (written once per run)."""
        return self.root / "weights" / "base-nf4"

    # -------------------------------------------------------------------------------------- evaluation
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def evaluation(self, name: str) -> Path:
        return self.eval_dir / f"{name}.json"

    def evaluation_records(self, name: str) -> Path:
        return self.eval_dir / f"{name}_records.jsonl"

    def evaluation_shard(self, name: str, tag: str, rank: int) -> Path:
        """Rank r's answers of evaluation ``name`` (served weights and questions hashed in ``tag``)."""
        return self.eval_dir / "shards" / f"{name}-{tag}" / f"rank-{rank}.json"

    @property
    def stop_file(self) -> Path:
        return self.eval_dir / "stopped.json"

    def round_evaluations(self) -> dict[int, Path]:
        """-1 (the base model) and each round k -> its evaluation file, for the evaluations that exist."""
        found = {-1: self.evaluation("base")} if self.evaluation("base").is_file() else {}
        return {**found, **_by_round(self.eval_dir.glob("round-*.json"), lambda p: p.stem)}

    # ------------------------------------------------------------------------------- export and report
    def export(self, k: int, merged: bool = False) -> Path:
        return self.root / "export" / (round_name(k) + ("-merged" if merged else ""))

    @property
    def best_export(self) -> Path:
        return self.root / "export" / "best.json"

    @property
    def in_use(self) -> Path:
        """Locked while a job runs here (the kernel drops the lock when that process ends, even when killed)."""
        return self.root / ".in-use"

    @property
    def timings(self) -> Path:
        return self.root / "engine_timings.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    # ------------------------------------------------------------------------------- `regenesis study`
    @property
    def study_config(self) -> Path:
        return self.root / "study_config.yaml"

    @property
    def study_log(self) -> Path:
        return self.root / "study.log"

    @property
    def study_attempts(self) -> Path:
        return self.root / "study_attempts.json"

    @property
    def study_marker(self) -> Path:
        return self.root / "study_run.json"

    # --------------------------------------------------------------------------- `regenesis evaluate`
    def standalone_eval(self, suffix: str) -> Path:
        """``eval.json``, ``eval.md`` or ``eval_records.jsonl`` of ``regenesis evaluate``."""
        return self.root / f"eval{suffix}"


def _by_round(paths, name_of) -> dict[int, Path]:
    """Round number -> path, for the paths whose ``name_of(path)`` is a plain ``round-<k>`` (no step)."""
    found = {}
    for path in paths:
        parsed = parse_round_name(name_of(path))
        if parsed is not None and parsed[1] is None:
            found[parsed[0]] = path
    return dict(sorted(found.items()))


class StudyLayout:
    """Paths of one study directory: a run directory per arm and seed (each a ``RunLayout``), the base
    evaluation, the report."""

    def __init__(self, study_dir: str | os.PathLike) -> None:
        self.root = Path(study_dir)

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.root / arm / f"seed-{seed}"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def results(self) -> Path:
        return self.root / "study.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

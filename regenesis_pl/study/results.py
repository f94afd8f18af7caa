"""Read a study's finished runs back from disk: per-question outcomes and what each run spent.

Only files the fits and evaluations already write are read (``eval/<round>_records.jsonl``, round summaries,
the Lightning CSV metrics, the study markers); nothing is recomputed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regenesis_pl.atomic import read_json, read_jsonl
from regenesis_pl.layout import RunLayout
from regenesis_pl.report import load_round_stats


@dataclass
class RunResult:
    """One finished arm x seed (or the base evaluation, seed None)."""

    arm: str
    seed: int | None
    evaluation: str                                   # which evaluation was read, e.g. "round-0" or "base"
    correct: dict[str, dict[str, bool]]               # task -> question id -> graded correct
    parsed: dict[str, dict[str, bool]]                # task -> question id -> an answer was found
    budget: dict[str, Any] = field(default_factory=dict)
    guidelines: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> candidates, accepted (pooled)


def _records(path: Path, run_dir: Path) -> tuple[dict, dict]:
    correct: dict[str, dict[str, bool]] = {}
    parsed: dict[str, dict[str, bool]] = {}
    fix = f"delete the run's folder ({run_dir}) and rerun the study to run it again"
    for _, record in read_jsonl(path, "evaluation records", fix):
        if "question_id" not in record:  # e.g. the count of questions skipped without a gold answer
            continue
        correct.setdefault(record["task"], {})[str(record["question_id"])] = bool(record["correct"])
        parsed.setdefault(record["task"], {})[str(record["question_id"])] = bool(record["parsed"])
    return correct, parsed


def training_tokens(run_dir: Path) -> int:
    """Tokens the fit trained on (``train/tokens`` per epoch in the CSV logs; a resumed fit's repeated epochs
    counted once)."""
    per_epoch: dict[int, float] = {}
    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    for path in versions:  # in version order: a resumed fit's later value of an epoch wins
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("train/tokens") and row.get("epoch"):
                    per_epoch[int(float(row["epoch"]))] = float(row["train/tokens"])
    return int(sum(per_epoch.values()))


def last_round_evaluation(run_dir: Path) -> Path:
    """``eval/round-<k>.json`` of the fit's last evaluated round (a run that never finished one is an error)."""
    evaluations = {k: path for k, path in RunLayout(run_dir).round_evaluations().items() if k >= 0}
    if not evaluations:
        raise ValueError(f"study: {run_dir} has no round evaluation; delete that folder and rerun the study")
    return evaluations[max(evaluations)]


def read_fit(arm: str, seed: int, run_dir: Path) -> RunResult:
    """The last round evaluation of a finished fit, and its budget pooled over its rounds."""
    layout = RunLayout(run_dir)
    last = last_round_evaluation(run_dir)
    correct, parsed = _records(layout.evaluation_records(last.stem), run_dir)
    budget = _budget(run_dir)
    guidelines: dict[str, dict[str, int]] = {}
    for summary in load_round_stats(run_dir).values():
        tokens = summary.get("tokens") or {}
        budget["generated_tokens"] += int(tokens.get("total_generated_tokens", 0))
        budget["prompt_tokens"] += int(tokens.get("total_prompt_tokens", 0))
        budget["kept"] += int(summary.get("kept", 0))
        budget["questions_solved"] += int(summary.get("questions_solved", 0))
        budget["rounds"] += 1
        pool_guidelines(guidelines, summary.get("guidelines") or {})
    budget["training_tokens"] = training_tokens(run_dir)
    return RunResult(arm, seed, last.stem, correct, parsed, budget, guidelines)


def read_base(arm: str, run_dir: Path) -> RunResult:
    """The base model's evaluation (``regenesis evaluate``'s records)."""
    correct, parsed = _records(RunLayout(run_dir).standalone_eval("_records.jsonl"), run_dir)
    return RunResult(arm, None, "base", correct, parsed, _budget(run_dir))


def _budget(run_dir: Path) -> dict[str, Any]:
    """A run's spend with nothing counted yet but its wall time and attempts (from its study marker)."""
    marker = read_json(RunLayout(run_dir).study_marker, "study marker")
    return {"generated_tokens": 0, "prompt_tokens": 0, "kept": 0, "questions_solved": 0, "rounds": 0,
            "training_tokens": 0, "wall_s": marker.get("seconds", 0.0), "attempts": marker.get("attempts", 1)}


def pool_guidelines(into: dict[str, dict[str, int]], stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Add per-guideline candidate and accept counts (a round summary's ``guidelines``, or a run's) into ``into``."""
    for gid, g in stats.items():
        pooled = into.setdefault(gid, {"candidates": 0, "accepted": 0})
        pooled["candidates"] += int(g.get("candidates", 0))
        pooled["accepted"] += int(g.get("accepted", 0))
    return into

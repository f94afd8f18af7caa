"""What a study runs: one fit configuration per arm and seed, composed from one shared base.

A study is a shared fit configuration (model, training questions, trainer, evaluation tasks) and a list of
arms, each a method and the settings it changes. Every arm x seed becomes an ordinary ``regenesis fit``
configuration in its own run directory, so it resumes like any fit. Fairness is enforced here, not hoped
for: an arm may not change the training questions, the trainer or the evaluation, and the seed and run
directory are the study's to set.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regenesis_pl.layout import StudyLayout

# keys an arm may not override: what makes the comparison fair (the model and its training settings, the
# training questions and epochs, the evaluation) and what the study itself sets per run. An arm changes its
# method: ``data.synthesis``, ``data.rounds``, ``data.restart_from_base``, ``generation``.
FIXED = ("model", "evaluation", "trainer", "seed_everything", "data.train_task", "data.epochs_per_round",
         "data.max_length", "data.batch_size", "data.val_fraction", "data.seed", "data.run_dir", "data.synthesis.seed")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
DEFAULT_SEEDS = (0, 1, 2)  # the paper's Figure 3 uses three seeds


@dataclass
class Arm:
    """One arm of a study.

    Args:
        name: Its label and folder name (letters, digits, ``-`` and ``_``).
        overrides: Settings merged into the study's fit configuration, nested as in a fit YAML, e.g.
            ``{data: {synthesis: {method: star, samples_per_prompt: 8}}}``.
        train: False for the base model: it is evaluated once, not fitted (greedy evaluation does not depend
            on the seed).
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    train: bool = True


@dataclass(frozen=True)
class PlannedRun:
    """One arm x seed: its run directory and its complete fit configuration."""

    arm: str
    seed: int
    run_dir: Path
    config: dict[str, Any]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in key by key (nested mappings merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted(value, f"{prefix}{key}.")
    return keys


def check_arms(arms: list[Arm], seeds: list[int]) -> None:
    """One-line errors for a study that cannot be run or compared fairly."""
    if not arms:
        raise ValueError("study.arms: give at least one arm, e.g. {name: regenesis, overrides: {}}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"study.seeds={seeds}: give one or more distinct seeds, e.g. [0, 1, 2]")
    names = [arm.name for arm in arms]
    for arm in arms:
        if not NAME.fullmatch(arm.name):
            raise ValueError(f"study.arms: name {arm.name!r} must be letters, digits, '-' or '_'")
        if arm.train and arm.name == "base":
            raise ValueError("study.arms: 'base' is the folder of the base model's evaluation; give it train: false "
                             "or name the trained arm otherwise")
    if len(set(names)) != len(names):
        raise ValueError(f"study.arms: names {names} repeat; give each arm its own name")
    if sum(not arm.train for arm in arms) > 1:
        raise ValueError("study.arms: more than one arm has train: false; the base model is evaluated once")
    for arm in arms:
        touched = [key for key in _dotted(arm.overrides) if key in FIXED]
        if touched:
            raise ValueError(f"study.arms[{arm.name}].overrides: {touched[0]} is shared by every arm (the same "
                             "model, training questions, training settings and evaluation for all; seeds and run "
                             "directories are set by the study); set it in study.fit instead")
        if not arm.train and arm.overrides:
            raise ValueError(f"study.arms[{arm.name}]: an arm with train: false is the base model and takes no "
                             "overrides")


def study_seeds(seeds: list[int] | None) -> list[int]:
    """The seeds a study runs: the given ones, or ``DEFAULT_SEEDS``."""
    return list(DEFAULT_SEEDS if seeds is None else seeds)


def plan_runs(fit: dict[str, Any], arms: list[Arm], seeds: list[int] | None, study_dir: str | Path) -> list[PlannedRun]:
    """Every trained arm x seed, seed-major (all arms of seed 0 first, so a study cut short still compares
    every arm on its first seeds); the arms and seeds are checked first (``check_arms``)."""
    seeds = study_seeds(seeds)
    check_arms(arms, seeds)
    layout = StudyLayout(study_dir)
    runs = []
    for seed in seeds:
        for arm in arms:
            if not arm.train:
                continue
            config = merge(fit, arm.overrides)
            run_dir = layout.run_dir(arm.name, seed)
            data = config.setdefault("data", {})
            data["seed"] = seed
            data["run_dir"] = str(run_dir)
            data.setdefault("synthesis", {})["seed"] = seed
            config["seed_everything"] = seed
            # the study evaluates the base model once, in its own arm
            config.setdefault("evaluation", {})["evaluate_base"] = False
            runs.append(PlannedRun(arm.name, seed, run_dir, config))
    return runs


def base_evaluation(fit: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The ``regenesis evaluate`` options that score the base model exactly as the fits score their rounds."""
    groups = task_groups(fit)
    if not groups["in_domain"]:
        raise ValueError("study.fit.evaluation.in_domain: give at least one task (and ood tasks); every arm is "
                         "scored on them")
    evaluation = fit.get("evaluation") or {}
    options = {"tasks": groups["in_domain"] + groups["ood"], "model": (fit.get("model") or {}).get("base_model", "embedded"), "run_dir": str(run_dir)}
    if "max_tokens" in evaluation:
        options["max_tokens"] = evaluation["max_tokens"]
    engine = (fit.get("generation") or {}).get("engine")
    if engine:
        options["engine"] = engine
    return options


def task_groups(fit: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{"in_domain": [...], "ood": [...]}``: the task entries of the shared evaluation."""
    evaluation = fit.get("evaluation") or {}
    return {"in_domain": list(evaluation.get("in_domain") or []), "ood": list(evaluation.get("ood") or [])}

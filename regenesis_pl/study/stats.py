"""Intervals for a study: a two-level bootstrap over evaluation questions and training seeds.

An arm's accuracy varies for two reasons: which test questions were drawn (the benchmark is a sample) and
which seed trained it (synthesis sampling, LoRA initialisation, batch order). Each bootstrap replicate draws
both: the questions of every task with replacement, and the arm's seeds with replacement; its accuracy is the
mean over the drawn seeds of the accuracy on the drawn questions. The 95% interval is the 2.5th and 97.5th
percentile of the replicates (percentile bootstrap).

Arms are compared on the same questions: a replicate draws one set of questions per task and uses it for
every arm, so a difference between two arms is paired over questions (the noise of which questions were
drawn largely cancels), while each arm's seeds are drawn on their own (seed s of one arm has nothing to do
with seed s of another). An arm evaluated once (the base model, greedy) has one "seed" and only the question
level varies.

Everything here is a pure function of per-question outcomes: ``Outcomes`` maps an arm to, per seed, a 0/1
vector over a task's questions in one fixed order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# arm -> task -> array of shape (seeds, questions) with 0/1 entries (questions in the same order for every arm)
Outcomes = Mapping[str, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def outcome_matrix(per_seed: Sequence[Mapping[str, bool]], question_ids: Sequence[str], where: str,
                   labels: Sequence[str] | None = None) -> np.ndarray:
    """Stack per-seed ``{question_id: correct}`` maps into a (seeds, questions) 0/1 array in ``question_ids``
    order; a seed missing a question (or answering one not asked) is a one-line ValueError naming ``where``
    and the seed's label (``labels``, e.g. "seed 2")."""
    rows = []
    for i, answers in enumerate(per_seed):
        missing = [q for q in question_ids if q not in answers]
        extra = sorted(set(answers) - set(question_ids))
        if missing or extra:
            label = labels[i] if labels is not None else f"run #{i}"
            raise ValueError(f"{where}, {label}: its evaluation has {len(missing)} question(s) missing and "
                             f"{len(extra)} extra against the others (e.g. {(missing or extra)[0]!r}); every arm must "
                             "be evaluated on the same questions, so rerun it with the study's evaluation settings")
        rows.append([1.0 if answers[q] else 0.0 for q in question_ids])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(question_ids))


def _check(outcomes: Outcomes, tasks: Sequence[str]) -> None:
    if not tasks or not outcomes:
        raise ValueError(f"study statistics: nothing to compare ({len(outcomes)} arm(s), tasks {list(tasks)})")
    for task in tasks:
        sizes = {arm: by_task[task].shape[1] for arm, by_task in outcomes.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"task {task!r}: arms were evaluated on different numbers of questions {sizes}; "
                             "evaluate every arm on the same questions")
    for arm, by_task in outcomes.items():
        seeds = {by_task[task].shape[0] for task in tasks}
        if len(seeds) > 1 or min(seeds) < 1:
            raise ValueError(f"arm {arm!r}: its tasks have {sorted(seeds)} evaluated seeds; every task needs the "
                             "same seeds, at least one")


def _replicates(outcomes: Outcomes, tasks: Sequence[str], draws: int, seed: int) -> dict[str, np.ndarray]:
    """Arm -> (draws,) mean accuracy over ``tasks`` per replicate (question draws shared by every arm)."""
    rng = np.random.default_rng(seed)
    # a seed is one trained model: a replicate draws an arm's seeds once and uses them for every task
    seed_draws = {}
    for arm, by_task in outcomes.items():
        k = by_task[tasks[0]].shape[0]
        seed_draws[arm] = rng.integers(0, k, size=(k, draws)) if k > 1 else np.zeros((1, draws), dtype=np.int64)
    totals = {arm: np.zeros(draws) for arm in outcomes}
    for task in tasks:  # one question draw for all arms: the paired part of the comparison
        n = next(iter(outcomes.values()))[task].shape[1]
        picks = rng.integers(0, n, size=(draws, n))
        for arm, by_task in outcomes.items():
            per_seed = by_task[task][:, picks].mean(axis=2)  # (seeds, draws)
            totals[arm] += np.take_along_axis(per_seed, seed_draws[arm], axis=0).mean(axis=0)
    return {arm: total / len(tasks) for arm, total in totals.items()}


def _point(outcomes: Outcomes, arm: str, tasks: Sequence[str]) -> float:
    return float(np.mean([outcomes[arm][task].mean() for task in tasks]))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def compare(outcomes: Outcomes, tasks: Sequence[str], references: Sequence[str] = (), draws: int = 2000,
            confidence: float = 0.95, seed: int = 0) -> tuple[dict[str, Estimate], dict[str, dict[str, Estimate]]]:
    """Every arm's mean accuracy over ``tasks`` (each task weighs the same, seeds averaged) with its interval, and
    per reference arm every other arm's difference to it, paired over questions; one set of replicates serves all.

    Args:
        outcomes: Arm -> task -> (seeds, questions) 0/1 array.
        tasks: The tasks to average (one task for a per-task figure, the OOD tasks for the OOD mean, ...).
        references: Arms to compare every other arm with.
        draws: Bootstrap replicates.
        confidence: Interval coverage, e.g. 0.95.
        seed: Seed of the resampling (the same seed gives the same intervals).

    Returns:
        ``(accuracy by arm, {reference: difference by arm}``).
    """
    for reference in references:
        if reference not in outcomes:
            raise ValueError(f"paired_differences: reference arm {reference!r} is not among {sorted(outcomes)}")
    _check(outcomes, tasks)
    reps = _replicates(outcomes, tasks, draws, seed)
    points = {arm: _point(outcomes, arm, tasks) for arm in outcomes}
    accuracy = {arm: Estimate(points[arm], *_interval(reps[arm], confidence)) for arm in outcomes}
    differences = {ref: {arm: Estimate(points[arm] - points[ref], *_interval(reps[arm] - reps[ref], confidence))
                         for arm in outcomes if arm != ref} for ref in references}
    return accuracy, differences


def accuracy_intervals(outcomes: Outcomes, tasks: Sequence[str], draws: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, Estimate]:
    """Per arm: the mean accuracy over ``tasks`` with its interval (``compare`` without references)."""
    return compare(outcomes, tasks, (), draws, confidence, seed)[0]


def paired_differences(outcomes: Outcomes, tasks: Sequence[str], reference: str, draws: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """Per arm other than ``reference``: its mean accuracy over ``tasks`` minus the reference's, with an interval
    paired over questions (both arms scored on the same drawn questions in every replicate)."""
    return compare(outcomes, tasks, (reference,), draws, confidence, seed)[1][reference]

"""The study's interval and paired-difference code on hand-made per-question outcomes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regenesis_pl.study.stats import accuracy_intervals, outcome_matrix, paired_differences


def _arm(*seeds: list[int]) -> np.ndarray:
    return np.asarray(seeds, dtype=np.float64)


def test_a_constant_arm_has_a_zero_width_interval():
    outcomes = {"always": {"t": _arm([1] * 30, [1] * 30)}, "never": {"t": _arm([0] * 30)}}
    est = accuracy_intervals(outcomes, ["t"], draws=500)
    assert (est["always"].mean, est["always"].low, est["always"].high) == (1.0, 1.0, 1.0)
    assert (est["never"].mean, est["never"].low, est["never"].high) == (0.0, 0.0, 0.0)


def test_question_level_interval_matches_the_binomial_width():
    # one seed, 400 questions, 30% correct: the percentile bootstrap approximates p +- 1.96 sqrt(p(1-p)/n)
    rng = np.random.default_rng(1)
    row = np.zeros(400)
    row[rng.choice(400, 120, replace=False)] = 1
    est = accuracy_intervals({"a": {"t": row[None, :]}}, ["t"], draws=4000)["a"]
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert est.mean == pytest.approx(0.3)
    assert est.low == pytest.approx(0.3 - half, abs=0.01) and est.high == pytest.approx(0.3 + half, abs=0.01)


def test_seed_level_spread_widens_the_interval():
    # seed 0 answers everything, seed 1 nothing: resampling two seeds gives 0, 0.5 or 1 -> the interval is [0, 1]
    est = accuracy_intervals({"a": {"t": _arm([1] * 50, [0] * 50)}}, ["t"], draws=2000)["a"]
    assert est.mean == 0.5 and est.low == 0.0 and est.high == 1.0


def test_a_seed_is_one_model_for_every_task():
    # seed 0 is right on task x and wrong on y, seed 1 the reverse: every draw of seeds averages the two tasks to
    # exactly 0.5, so the two-task mean has no seed-level spread at all (drawing seeds per task would invent one)
    outcomes = {"a": {"x": _arm([1] * 20, [0] * 20), "y": _arm([0] * 20, [1] * 20)}}
    est = accuracy_intervals(outcomes, ["x", "y"], draws=1000)["a"]
    assert (est.mean, est.low, est.high) == (0.5, 0.5, 0.5)


def test_paired_difference_of_identical_arms_is_exactly_zero():
    rng = np.random.default_rng(0)
    row = (rng.random(80) < 0.4).astype(float)
    diff = paired_differences({"ref": {"t": row[None, :]}, "same": {"t": row[None, :]}}, ["t"], "ref", draws=500)
    assert diff["same"].as_dict() == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_paired_difference_is_tighter_than_the_unpaired_one():
    # arm b = arm a plus 10 more questions right out of 100: the difference is exactly 0.10, and pairing over
    # questions leaves only the binomial noise of those 10 flips (sd ~0.03), far below the arms' own spread
    a = np.zeros(100)
    a[:50] = 1
    b = a.copy()
    b[50:60] = 1
    outcomes = {"a": {"t": a[None, :]}, "b": {"t": b[None, :]}}
    diff = paired_differences(outcomes, ["t"], "a", draws=4000)["b"]
    assert diff.mean == pytest.approx(0.10)
    assert 0.03 < diff.low < 0.07 and 0.13 < diff.high < 0.17
    each = accuracy_intervals(outcomes, ["t"], draws=4000)
    assert each["b"].high - each["b"].low > 1.5 * (diff.high - diff.low)


def test_same_resampling_seed_gives_the_same_intervals():
    outcomes = {"a": {"t": _arm([1, 0, 1, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0, 1])}}
    assert accuracy_intervals(outcomes, ["t"], seed=3) == accuracy_intervals(outcomes, ["t"], seed=3)


def test_mismatched_questions_are_refused():
    with pytest.raises(ValueError, match="different numbers of questions"):
        accuracy_intervals({"a": {"t": _arm([1, 0])}, "b": {"t": _arm([1, 0, 1])}}, ["t"])
    with pytest.raises(ValueError, match="reference arm 'c'"):
        paired_differences({"a": {"t": _arm([1])}}, ["t"], "c")
    with pytest.raises(ValueError, match="1 question\\(s\\) missing"):
        outcome_matrix([{"q1": True, "q2": False}, {"q1": True}], ["q1", "q2"], "arm star, task t")
    assert outcome_matrix([{"q2": False, "q1": True}], ["q1", "q2"], "x").tolist() == [[1.0, 0.0]]

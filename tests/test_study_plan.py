"""The study's plumbing without a model: arms composed into fit configurations (fairness enforced), markers
that refuse changed settings, training tokens read from Lightning's CSV logs, and the report built from
hand-made per-question outcomes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from plot_checks import assert_drawn_png

from regenesis_pl.atomic import write_json
from regenesis_pl.hashing import config_hash
from regenesis_pl.layout import RunLayout
from regenesis_pl.study.plan import Arm, base_evaluation, plan_runs
from regenesis_pl.study.report import summarize, write_study_report
from regenesis_pl.study.results import RunResult, training_tokens
from regenesis_pl.study.runner import finished
from regenesis_pl.study.stats import accuracy_intervals, paired_differences

FIT = {"model": {"base_model": "embedded", "lr": 1e-3},
       "data": {"train_task": {"name": "arithmetic", "limit": 8}, "synthesis": {"temperature": 0.8}},
       "evaluation": {"in_domain": [{"name": "arithmetic", "split": "test"}], "ood": [{"name": "strategyqa"}]}}


def test_arms_become_one_fit_configuration_per_seed(tmp_path):
    arms = [Arm("base", train=False), Arm("star", {"data": {"synthesis": {"method": "star", "samples_per_prompt": 8}}}),
            Arm("regenesis", {"data": {"synthesis": {"method": "regenesis"}, "rounds": 2}})]
    runs = plan_runs(FIT, arms, [3, 4], tmp_path)
    assert [(r.arm, r.seed) for r in runs] == [("star", 3), ("regenesis", 3), ("star", 4), ("regenesis", 4)]
    star = runs[0].config
    # the arm's settings merged into the shared ones, the study's seed and run directory set, base eval off
    assert star["data"]["synthesis"] == {"temperature": 0.8, "method": "star", "samples_per_prompt": 8, "seed": 3}
    assert star["seed_everything"] == 3 and star["data"]["seed"] == 3
    assert star["data"]["run_dir"] == str(tmp_path / "star" / "seed-3")
    assert star["evaluation"]["evaluate_base"] is False and star["model"] == FIT["model"]
    assert runs[1].config["data"]["rounds"] == 2 and "rounds" not in FIT["data"]  # the shared dict is untouched
    assert "evaluate_base" not in FIT["evaluation"]
    options = base_evaluation(FIT, tmp_path / "base")
    assert options["tasks"] == FIT["evaluation"]["in_domain"] + FIT["evaluation"]["ood"]


@pytest.mark.parametrize("arms, seeds, message", [
    ([Arm("star", {"evaluation": {"max_tokens": 9}})], [0], "evaluation is shared by every arm"),
    ([Arm("star", {"data": {"train_task": {"limit": 99}}})], [0], "data.train_task is shared"),
    ([Arm("star", {"model": {"lr": 1.0}})], [0], "model is shared"),
    ([Arm("star", {"data": {"epochs_per_round": 9}})], [0], "data.epochs_per_round is shared"),
    ([Arm("star", {"data": {"synthesis": {"seed": 5}}})], [0], "data.synthesis.seed is shared"),
    ([Arm("a"), Arm("a")], [0], "repeat"),
    ([Arm("base")], [0], "'base' is the folder"),
    ([Arm("b1", train=False), Arm("b2", train=False)], [0], "more than one arm has train: false"),
    ([Arm("base", {"data": {}}, train=False)], [0], "takes no overrides"),
    ([Arm("x/y")], [0], "letters, digits"),
    ([Arm("a")], [0, 0], "distinct seeds"),
    ([], [0], "at least one arm"),
])
def test_unfair_or_unrunnable_studies_are_refused(tmp_path, arms, seeds, message):
    with pytest.raises(ValueError, match=message):
        plan_runs(FIT, arms, seeds, tmp_path)


def test_a_finished_run_with_other_settings_names_what_changed(tmp_path):
    config = plan_runs(FIT, [Arm("star", {"data": {"synthesis": {"method": "star"}}})], [0], tmp_path)[0].config
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    assert finished(layout.root, config) is None
    layout.study_config.write_text(yaml.safe_dump(config))
    write_json(layout.study_marker, {"config_hash": config_hash(config), "seconds": 1.0})
    assert finished(layout.root, config)["seconds"] == 1.0
    changed = json.loads(json.dumps(config))
    changed["data"]["synthesis"]["temperature"] = 1.1
    with pytest.raises(ValueError, match=r"data\.synthesis\.temperature changed"):
        finished(layout.root, changed)


def test_training_tokens_count_each_epoch_once_across_resumed_versions(tmp_path):
    def write(version: int, rows: list[dict]) -> None:
        path = tmp_path / "logs" / f"version_{version}" / "metrics.csv"
        path.parent.mkdir(parents=True)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", "step", "train/loss", "train/tokens"])
            writer.writeheader()
            writer.writerows(rows)

    write(0, [{"epoch": 0, "step": 1, "train/loss": 1.0}, {"epoch": 0, "step": 3, "train/tokens": 100.0}])
    # resumed: a later version repeats epoch 1 and its value wins; "version_10" sorts before "version_2" as
    # text, so versions must be ordered by number for version 10's epoch 1 to win
    write(1, [{"epoch": 1, "step": 5, "train/tokens": 70.0}])
    write(2, [{"epoch": 1, "step": 6, "train/tokens": 90.0}])
    write(10, [{"epoch": 1, "step": 6, "train/tokens": 95.0}, {"epoch": 2, "step": 9, "train/tokens": 50.0}])
    assert training_tokens(tmp_path) == 100 + 95 + 50


def _result(arm: str, seed, right: list[int], solved: int = 0) -> RunResult:
    correct = {"t1": {f"q{i}": bool(v) for i, v in enumerate(right)}, "t2": {"a": True, "b": False}}
    parsed = {"t1": {f"q{i}": True for i in range(len(right))}, "t2": {"a": True, "b": True}}
    budget = {"generated_tokens": 1000 * (seed or 0), "prompt_tokens": 0, "kept": 4, "questions_solved": solved,
              "training_tokens": 500, "wall_s": 60.0, "attempts": 1}
    guidelines = {"g1": {"candidates": 4, "accepted": 2}, "g2": {"candidates": 2, "accepted": 0}}
    return RunResult(arm, seed, "round-0", correct, parsed, budget, guidelines if arm == "regenesis" else {})


def test_report_from_hand_made_outcomes(tmp_path):
    results = [_result("base", None, [0, 0, 1, 0]),
               _result("regenesis", 0, [1, 1, 1, 0], 3), _result("regenesis", 1, [1, 0, 1, 0], 2),
               _result("star", 0, [0, 1, 1, 0])]
    groups = {"in_domain": ["t1"], "ood": ["t2"]}
    data = summarize(results, groups, ["base", "star", "regenesis", "lmsi"], {"base": 1, "star": 2, "regenesis": 2,
                                                                               "lmsi": 2}, "regenesis", "base", 500)
    assert data["finished_arms"] == ["base", "star", "regenesis"]  # lmsi has not run yet
    assert data["runs"] == {"base": 1, "star": 1, "regenesis": 2}
    assert data["accuracy"]["t1"]["regenesis"]["mean"] == pytest.approx(5 / 8)
    assert data["accuracy"]["in_domain_mean"]["base"]["mean"] == pytest.approx(0.25)
    assert data["accuracy"]["ood_mean"]["star"]["mean"] == pytest.approx(0.5)
    assert data["differences"]["base"]["t1"]["regenesis"]["mean"] == pytest.approx(5 / 8 - 1 / 4)
    assert data["differences"]["regenesis"]["t1"]["star"]["mean"] == pytest.approx(2 / 4 - 5 / 8)
    assert data["budget"]["regenesis"]["generated_tokens"] == 500 and data["budget"]["regenesis"]["questions_solved"] == 2.5
    assert data["guidelines"] == {"regenesis": {"g1": {"candidates": 8, "accepted": 4, "accept_rate": 0.5},
                                                "g2": {"candidates": 4, "accepted": 0, "accept_rate": 0.0}}}
    report = write_study_report(tmp_path, data, ["setup line"]).read_text()
    assert "**Partial study**" in report and "star (1/2)" in report and "lmsi (0/2)" in report
    assert "| regenesis | 2/2 | 62.5 [" in report
    assert "## Difference to regenesis" in report and "## Difference to base" in report
    assert json.loads((tmp_path / "study.json").read_text())["runs"] == data["runs"]
    assert data["total_wall_s"] == 4 * 60.0 and "All finished runs together: 0.07 hours" in report
    assert_drawn_png(tmp_path / "plots" / "accuracy.png")


def test_an_arm_missing_a_question_is_named_with_its_seed():
    results = [_result("star", 0, [1, 0, 1]), _result("star", 1, [1, 0])]
    with pytest.raises(ValueError, match="study arm 'star', task 't1', seed 1: its evaluation has 1 question"):
        summarize(results, {"in_domain": ["t1"], "ood": []}, ["star"], {"star": 2}, None, None, 200)


def test_seeds_are_drawn_per_arm():
    # two arms with the same outcomes: if both drew the same seeds in every replicate their difference would be
    # exactly zero; drawn per arm, the seed spread shows up in the paired difference
    same = np.asarray([[1.0] * 10, [0.0] * 10])
    diff = paired_differences({"a": {"t": same}, "b": {"t": same.copy()}}, ["t"], "a", draws=500)["b"]
    assert diff.mean == 0.0 and diff.low < 0 < diff.high


def test_another_resampling_seed_gives_other_intervals():
    rng = np.random.default_rng(0)
    outcomes = {"a": {"t": (rng.random((1, 60)) < 0.5).astype(float)}}
    first, second = (accuracy_intervals(outcomes, ["t"], draws=300, seed=s)["a"] for s in (1, 2))
    assert first.mean == second.mean and (first.low, first.high) != (second.low, second.high)

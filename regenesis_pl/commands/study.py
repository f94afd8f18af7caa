"""``regenesis study``: every method on the same budget over several seeds, compared with intervals."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from regenesis_pl.atomic import read_json, write_text
from regenesis_pl.layout import StudyLayout
from regenesis_pl.run_lock import claimed
from regenesis_pl.study.plan import Arm, PlannedRun, base_evaluation, plan_runs, study_seeds, task_groups
from regenesis_pl.study.report import summarize, write_study_report
from regenesis_pl.study.results import last_round_evaluation, read_base, read_fit
from regenesis_pl.study.runner import finished, run_base_evaluation, run_fit

log = logging.getLogger("regenesis_pl.study")


def run_study(
    fit: dict[str, Any],
    arms: list[Arm],
    seeds: list[int] | None = None,
    study_dir: str = "runs/study",
    reference: str | None = "regenesis",
    draws: int = 2000,
    confidence: float = 0.95,
    report_only: bool = False,
    publish: str | None = None,
) -> dict[str, Any]:
    """Run every arm x seed as its own fit, evaluate the base model once, and compare them with intervals.

    Each arm x seed is an ordinary ``regenesis fit`` in ``<study_dir>/<arm>/seed-<s>`` (its configuration is
    saved there as ``study_config.yaml``), run seed-major: every arm of the first seed, then the next seed.
    Rerunning the same command after a kill reads finished runs back, resumes the interrupted one from its
    checkpoint and redoes nothing. The report is rewritten after every finished run. (``regenesis study`` first
    parses every arm's fit configuration against the live classes: ``lightning_cli.check_study``.)

    Args:
        fit: The shared fit configuration, as in a ``regenesis fit`` YAML (model, data with the training
            task, generation, evaluation with in-domain and OOD tasks, trainer). Every arm uses its training
            questions, trainer settings and evaluation.
        arms: The methods compared: ``{name, overrides, train}``; ``overrides`` may change the method and its
            settings (``data.synthesis``, ``data.rounds``, ``model``, ...) but not what makes arms comparable.
            One arm may have ``train: false``: the base model, evaluated once.
        seeds: Training seeds; each sets ``seed_everything``, ``data.seed`` and ``data.synthesis.seed``.
            None: [0, 1, 2].
        study_dir: Where the runs, ``study.json``, ``report.md`` and ``plots/`` go.
        reference: The arm every other arm is compared with (paired differences); the base arm is also one.
        draws: Bootstrap replicates of each interval.
        confidence: Interval coverage.
        report_only: Write the report from the finished runs and run nothing.
        publish: Also write the report to this Markdown file (e.g. RESULTS.md), its plot beside it.

    The console gets one line per run event; each run's own output goes to its ``study.log``.

    Returns:
        Every number of the report (as in ``study.json``).
    """
    seeds = study_seeds(seeds)
    if draws < 100 or not 0.5 <= confidence < 1:
        raise ValueError(f"study: draws={draws} must be >= 100 and confidence={confidence} in [0.5, 1)")
    layout = StudyLayout(study_dir)
    runs = plan_runs(fit, arms, seeds, study_dir)
    base_arm = next((arm.name for arm in arms if not arm.train), None)
    base_options = base_evaluation(fit, layout.base)
    groups = _task_names(fit)
    if reference is not None and reference not in {arm.name for arm in arms}:
        raise ValueError(f"study.reference={reference!r} is not an arm; choose one of {[a.name for a in arms]} or null")

    def report() -> dict[str, Any]:
        return _report(layout, fit, arms, seeds, runs, base_arm, base_options, groups, reference, draws, confidence,
                       publish)

    data = None  # the report after the last run that ran now (a run read back changes nothing)
    if not report_only:  # --report_only reads finished runs, so it may run beside the study that makes them
        with claimed(study_dir, "study directory"):  # a second study on the same directory is refused in one line
            total = len(runs) + (base_arm is not None)
            if base_arm is not None:
                run_base_evaluation(layout.base, base_options, f"base model evaluation (1/{total})")
            for i, run in enumerate(runs, start=1 + (base_arm is not None)):
                if run_fit(run.run_dir, run.config, f"{run.arm} seed {run.seed} ({i}/{total})"):
                    _log_result(run)
                    data = report()
    return data if data is not None else report()


def _task_names(fit: dict[str, Any]) -> dict[str, list[str]]:
    """In-domain and OOD task names as the evaluations record them (``arithmetic`` is recorded by its full
    BIG-bench name, for example)."""
    from regenesis_pl.tasks.registry import TaskConfig, load_questions

    names = {}
    for group, entries in task_groups(fit).items():
        names[group] = []
        for entry in entries:
            for task in dict.fromkeys(q.task for q in load_questions(TaskConfig(**entry))):
                names[group].append(task)
    return names


def _log_result(run: PlannedRun) -> None:
    last = read_json(last_round_evaluation(run.run_dir), "evaluation")
    ood = last.get("ood_mean")
    log.info("study: %s seed %d: in-domain %.1f%%%s after %s", run.arm, run.seed, 100 * last["in_domain_mean"],
             f", OOD {100 * ood:.1f}%" if ood is not None else "", last["name"])


def _report(layout: StudyLayout, fit, arms: list[Arm], seeds, runs, base_arm, base_options, groups, reference, draws,
            confidence, publish) -> dict[str, Any]:
    results = [read_fit(r.arm, r.seed, r.run_dir) for r in runs if finished(r.run_dir, r.config) is not None]
    if base_arm is not None and finished(layout.base, base_options) is not None:
        results.append(read_base(base_arm, layout.base))
    planned = {arm.name: (len(seeds) if arm.train else 1) for arm in arms}
    if not results:
        log.info("study: nothing has finished yet in %s; no report", layout.root)
        return {"arms": [a.name for a in arms], "finished_arms": [], "planned_runs": planned}
    data = summarize(results, groups, [a.name for a in arms], planned, reference, base_arm, draws, confidence)
    train = fit.get("data", {}).get("train_task", {})
    setup = [f"Study directory `{layout.root}`; model `{fit.get('model', {}).get('model', 'embedded')}`; "
             f"training task `{train.get('name')}` ({train.get('split', 'train')}, {train.get('limit')} questions); "
             f"seeds {seeds}; arms: " + ", ".join(f"`{a.name}`" for a in arms) + ".",
             "Each arm's figures come from its last round's evaluation (greedy, zero-shot chain of thought)."]
    report = write_study_report(layout.root, data, setup)
    if publish:
        target = Path(publish)
        plot = target.with_name(f"{target.stem}_accuracy.png")
        shutil.copyfile(layout.plots / "accuracy.png", plot)
        write_text(target, report.read_text(encoding="utf-8").replace("](plots/accuracy.png)", f"]({plot.name})"))
    log.info("study: report %s", report)
    return data

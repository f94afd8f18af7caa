"""The study report: accuracy per task and arm with intervals, paired differences, and what each arm spent.

``study.json`` holds every number; ``report.md`` the tables a paper would show; ``plots/`` the accuracies with
their intervals as error bars. Arms are compared on the finished seeds only, and the report says how many of
the planned seeds each arm has, so a study cut short still gives an honest partial table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regenesis_pl.atomic import write_json, write_text
from regenesis_pl.layout import StudyLayout
from regenesis_pl.study.results import RunResult, pool_guidelines
from regenesis_pl.study.stats import Estimate, compare, outcome_matrix

BUDGET_KEYS = ("generated_tokens", "prompt_tokens", "kept", "questions_solved", "training_tokens", "wall_s")


def _outcomes(results: Sequence[RunResult], tasks: Sequence[str]) -> tuple[dict, dict]:
    """Arm -> task -> (seeds, questions) 0/1 arrays of correctness and of parsing, questions in one order."""
    by_arm: dict[str, list[RunResult]] = {}
    for r in results:
        by_arm.setdefault(r.arm, []).append(r)
    order = {}
    for task in tasks:
        ids = next((sorted(r.correct[task]) for r in results if task in r.correct), None)
        if ids is None:
            raise ValueError(f"study: no finished run has answers for task {task!r}; check the evaluation tasks")
        order[task] = ids
    correct, parsed = {}, {}
    for arm, runs in by_arm.items():
        correct[arm], parsed[arm] = {}, {}
        for task in tasks:
            where = f"study arm {arm!r}, task {task!r}"
            labels = [f"seed {r.seed}" if r.seed is not None else "its evaluation" for r in runs]
            correct[arm][task] = outcome_matrix([r.correct.get(task, {}) for r in runs], order[task], where, labels)
            parsed[arm][task] = outcome_matrix([r.parsed.get(task, {}) for r in runs], order[task], where, labels)
    return correct, parsed


def _cell(e: Estimate, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(100 * e.mean)} [{fmt.format(100 * e.low)}, {fmt.format(100 * e.high)}]"


def summarize(results: Sequence[RunResult], groups: dict[str, list[str]], arms: Sequence[str],
              planned_runs: dict[str, int], reference: str | None, base: str | None, draws: int = 2000,
              confidence: float = 0.95) -> dict[str, Any]:
    """Every number of the report, as one JSON-able dict (see ``write_study_report``)."""
    tasks = groups["in_domain"] + groups["ood"]
    present = [a for a in arms if any(r.arm == a for r in results)]
    subset = [r for r in results if r.arm in present]
    correct, parsed = _outcomes(subset, tasks)
    views = {**{t: [t] for t in tasks}, "in_domain_mean": groups["in_domain"]}
    if groups["ood"]:
        views["ood_mean"] = groups["ood"]
    references = [ref for ref in (reference, base) if ref in present]
    accuracy: dict[str, dict] = {}
    differences: dict[str, dict] = {ref: {} for ref in references}
    for view, ts in views.items():  # one bootstrap per view serves the accuracies and every difference
        each, diffs = compare(correct, ts, references, draws, confidence)
        accuracy[view] = {a: e.as_dict() for a, e in each.items()}
        for ref in references:
            differences[ref][view] = {a: e.as_dict() for a, e in diffs[ref].items()}
    parse_rate = {t: {a: float(parsed[a][t].mean()) for a in present} for t in tasks}
    budgets, guidelines, seeds, finished = {}, {}, {}, {}
    for arm in present:
        runs = [r for r in subset if r.arm == arm]
        seeds[arm] = sorted(r.seed for r in runs if r.seed is not None)
        finished[arm] = len(runs)
        budgets[arm] = {k: float(np.mean([r.budget.get(k, 0) for r in runs])) for k in BUDGET_KEYS}
        budgets[arm]["attempts"] = int(sum(r.budget.get("attempts", 1) for r in runs))
        pooled: dict[str, dict[str, int]] = {}
        for r in runs:
            pool_guidelines(pooled, r.guidelines)
        if len(pooled) > 1:  # a baseline's single source (few-shot prompt, dataset rationale) says nothing here
            guidelines[arm] = {gid: {**g, "accept_rate": g["accepted"] / g["candidates"] if g["candidates"] else None}
                               for gid, g in sorted(pooled.items())}
    return {"arms": list(arms), "finished_arms": present, "seeds": seeds, "runs": finished, "planned_runs": planned_runs,
            "tasks": groups, "questions": {t: correct[present[0]][t].shape[1] for t in tasks},
            "evaluations": {f"{r.arm}/seed-{r.seed}" if r.seed is not None else r.arm: r.evaluation for r in subset},
            "interval": {"method": "percentile bootstrap over questions (shared by all arms) and seeds (per arm)",
                         "draws": draws, "confidence": confidence},
            "accuracy": accuracy, "differences": differences, "parse_rate": parse_rate, "budget": budgets,
            "total_wall_s": float(sum(r.budget.get("wall_s", 0.0) for r in subset)),
            "guidelines": guidelines}


def _accuracy_lines(data: dict[str, Any]) -> list[str]:
    views = list(data["accuracy"])
    lines = ["| arm | runs | " + " | ".join(_view_label(v) for v in views) + " |",
             "|---|---:|" + "---:|" * len(views)]
    for arm in data["finished_arms"]:
        cells = [_cell(Estimate(**data["accuracy"][v][arm])) for v in views]
        lines.append(f"| {arm} | {data['runs'][arm]}/{data['planned_runs'][arm]} | " + " | ".join(cells) + " |")
    return lines


def _view_label(view: str) -> str:
    return {"in_domain_mean": "**in-domain mean**", "ood_mean": "**OOD mean**"}.get(view, view)


def _difference_lines(data: dict[str, Any], ref: str) -> list[str]:
    views = list(data["differences"][ref])
    lines = ["| arm | " + " | ".join(_view_label(v) for v in views) + " |", "|---|" + "---:|" * len(views)]
    for arm in data["finished_arms"]:
        if arm == ref:
            continue
        lines.append(f"| {arm} | " + " | ".join(_cell(Estimate(**data["differences"][ref][v][arm]), True)
                                                for v in views) + " |")
    return lines


def _budget_lines(data: dict[str, Any]) -> list[str]:
    lines = [("| arm | generated tokens | prompt tokens | kept paths | questions solved | training tokens | "
              "wall time (min) | attempts (all seeds) |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm in data["finished_arms"]:
        b = data["budget"][arm]
        lines.append(f"| {arm} | {b['generated_tokens']:,.0f} | {b['prompt_tokens']:,.0f} | {b['kept']:.1f} | "
                     f"{b['questions_solved']:.1f} | {b['training_tokens']:,.0f} | {b['wall_s'] / 60:.1f} | "
                     f"{b['attempts']} |")
    return lines


def _guideline_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for arm, pooled in data["guidelines"].items():
        rows = sorted(pooled.items(), key=lambda kv: -(kv[1]["accept_rate"] or 0))
        lines += [f"{arm} (pooled over {data['runs'][arm]} seed(s)):", "",
                  "| guideline | candidates | accepted | accept rate |", "|---|---:|---:|---:|"]
        for gid, g in rows:
            rate = "-" if g["accept_rate"] is None else f"{100 * g['accept_rate']:.0f}%"
            lines.append(f"| {gid} | {g['candidates']} | {g['accepted']} | {rate} |")
        lines.append("")
    return lines


def _plot(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views, arms = list(data["accuracy"]), data["finished_arms"]
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(views)), 4.5))
    for i, arm in enumerate(arms):
        est = [data["accuracy"][v][arm] for v in views]
        xs = np.arange(len(views)) + (i - (len(arms) - 1) / 2) * width
        means = np.array([100 * e["mean"] for e in est])
        # a percentile interval need not contain the mean; an error bar cannot be negative
        errors = np.array([[max(0.0, 100 * (e["mean"] - e["low"])) for e in est],
                           [max(0.0, 100 * (e["high"] - e["mean"])) for e in est]])
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=arm)
    ax.set_xticks(np.arange(len(views)), [_view_label(v).strip("*") for v in views], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel(f"accuracy (%), {100 * data['interval']['confidence']:.0f}% interval")
    ax.set_title("Accuracy per arm (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_study_report(study_dir: str | Path, data: dict[str, Any], setup: list[str]) -> Path:
    """Write ``study.json``, ``report.md`` and ``plots/accuracy.png``; returns the report's path."""
    layout = StudyLayout(study_dir)
    write_json(layout.results, data)
    plot = _plot(data, layout.plots / "accuracy.png")
    draws, conf = data["interval"]["draws"], data["interval"]["confidence"]
    pending = [f"{arm} ({data['runs'].get(arm, 0)}/{n})" for arm, n in data["planned_runs"].items()
               if data["runs"].get(arm, 0) < n]
    lines = ["# Study report", "", *setup, ""]
    if pending:
        lines += [(f"**Partial study**: runs finished per unfinished arm: {', '.join(pending)}. Rerun the same "
                   "command to finish it; finished runs are read back."), ""]
    sizes = ", ".join(f"{t} {n}" for t, n in data["questions"].items())
    lines += ["## Accuracy (%), mean over seeds", "",
              (f"Each cell: mean [{100 * conf:.0f}% interval]. Interval: {data['interval']['method']}, {draws} draws. "
               f"Means over tasks weigh each task equally. Questions per task: {sizes}. With two or three seeds the "
               "seed level of the bootstrap can only draw among those few models, so it understates the spread "
               "a new seed could show; read the intervals as a lower bound on the uncertainty."), ""]
    lines += _accuracy_lines(data)
    lines += ["", "## Parse rate (%), mean over seeds", "",
              "| arm | " + " | ".join(data["parse_rate"]) + " |", "|---|" + "---:|" * len(data["parse_rate"])]
    for arm in data["finished_arms"]:
        lines.append(f"| {arm} | " + " | ".join(f"{100 * data['parse_rate'][t][arm]:.1f}" for t in data["parse_rate"])
                     + " |")
    for ref in data["differences"]:
        lines += ["", f"## Difference to {ref} (accuracy points, paired over questions)", ""]
        lines += _difference_lines(data, ref)
    lines += ["", "## What each arm spent (mean per seed)", "",
              ("Generated and prompt tokens: synthesis only (evaluation excluded). Training tokens: every token of "
               "every training batch, over all epochs. Wall time: the whole fit (synthesis, training, evaluation), "
               "summed over attempts when a run was resumed."), ""]
    lines += _budget_lines(data)
    lines += ["", f"All finished runs together: {data['total_wall_s'] / 3600:.2f} hours of wall time."]
    if data["guidelines"]:
        lines += ["", "## Guideline accept rates (pooled over seeds)", ""]
        lines += _guideline_lines(data)
    lines += ["", "## Plot", "", f"![accuracy]({plot.relative_to(layout.root).as_posix()})"]
    return write_text(layout.report, "\n".join(lines) + "\n")

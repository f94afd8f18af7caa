"""The run report: ``<run_dir>/report.md`` plus PNG plots, built only from what the run wrote to disk.

Inputs (all optional; a missing part is said in the report, never invented):

- ``eval/base.json`` and ``eval/round-{k}.json``: per-task accuracy and parse rate (``EvaluationCallback``);
- ``round-{k}/summary.json``: synthesis statistics of round k (kept paths, solved questions, hint
  recoveries, per-guideline accept rates);
- ``engine_timings.json``: weight push and wake times per round (``EngineCallback``).

Plots (matplotlib, Agg backend, so no display is needed): accuracy per round, guideline accept rates per
round, kept paths per round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regenesis_pl.atomic import read_json, write_text
from regenesis_pl.layout import RunLayout


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path, "report input")
    except FileNotFoundError:
        return None


def load_evaluations(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Round-level evaluations by round (-1 = the base model before training), in round order."""
    return {k: _read_json(path) for k, path in RunLayout(run_dir).round_evaluations().items()}


def load_round_stats(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Synthesis statistics by round (``round-{k}/summary.json``), in round order."""
    return {k: _read_json(path) for k, path in RunLayout(run_dir).rounds_with_summary().items()}


def _label(round_: int) -> str:
    return "base" if round_ < 0 else f"round {round_}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _accuracy_table(evals: dict[int, dict[str, Any]]) -> list[str]:
    rounds = list(evals)
    kinds: dict[str, str] = {}
    for ev in evals.values():
        for task in ev.get("in_domain", []):
            kinds.setdefault(task, "in-domain")
        for task in ev.get("ood", []):
            kinds.setdefault(task, "OOD")
        for task in ev.get("per_task", {}):
            kinds.setdefault(task, "?")
    lines = [("Accuracy (parse rate) per task; unparsed answers count as wrong. "
             "Base = the model before any training; rounds are 0-based."), "",
             "| task | kind | n | " + " | ".join(_label(r) for r in rounds) + " |",
             "|---|---|---:|" + "---:|" * len(rounds)]
    for task, kind in kinds.items():
        cells, n = [], "-"
        for r in rounds:
            score = evals[r].get("per_task", {}).get(task)
            if score is None:
                cells.append("-")
                continue
            n = str(score["n"])
            cells.append(f"{_pct(score['accuracy'])} ({_pct(score['parse_rate'])})")
        lines.append(f"| {task} | {kind} | {n} | " + " | ".join(cells) + " |")
    for key, name in (("in_domain_mean", "mean in-domain"), ("ood_mean", "mean OOD")):
        if any(evals[r].get(key) is not None for r in rounds):
            lines.append(f"| **{name}** | | | " + " | ".join(f"**{_pct(evals[r].get(key))}**" for r in rounds) + " |")
    trained = {r: ev.get("in_domain_mean") for r, ev in evals.items() if r >= 0 and ev.get("in_domain_mean") is not None}
    if trained:
        best = max(trained, key=lambda r: (trained[r], -r))
        lines += ["", (f"Best round by mean in-domain accuracy: **{best}** ({_pct(trained[best])}); "
                      f"base: {_pct(evals.get(-1, {}).get('in_domain_mean'))}.")]
    return lines


def _stop_line(run_dir: Path) -> list[str]:
    stop = _read_json(RunLayout(run_dir).stop_file)
    if stop is None:
        return []
    return ["", (f"Stopped early after round {stop['after_round']}: {stop['rounds_without_gain']} round(s) without a "
                 f"gain over {_pct(stop['bar'])} (patience {stop['patience']}); use round {stop['best_round']}'s "
                 "export.")]


def _synthesis_table(stats: dict[int, dict[str, Any]]) -> list[str]:
    lines = [("| round | questions | solved | solved main pass | hint: questions / recovered | candidates | "
             "answer parse rate | kept paths | kept path tokens (mean) | distinct-2 | generated tokens |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, s in stats.items():
        hint = s.get("hint", {})
        tokens = s.get("tokens", {})
        generated = tokens.get("total_generated_tokens", "-")
        lines.append(f"| {r} | {s.get('questions', '-')} | {s.get('questions_solved', '-')} | "
                     f"{s.get('solved_main_pass', '-')} | {hint.get('questions', '-')} / {hint.get('recovered', '-')} | "
                     f"{s.get('candidates', '-')} | {_pct(s.get('answer_parse_rate'))} | {s.get('kept', '-')} | "
                     f"{s.get('kept_path_tokens_mean', '-')} | {s.get('distinct_2', '-')} | {generated} |")
    return lines


def _timings_table(timings: dict[str, Any]) -> list[str]:
    push = timings.get("push") or {}
    how = (f" Weights reach the engines as **{push['choice']}** (push: {push.get('mode')}; {push.get('reason')})."
           if push.get("choice") else "")
    if push.get("base"):
        how += f" QLoRA adapters are served on the {push['base']}."
    lines = [(f"Engine: {timings.get('backend', '?')}, built in {timings.get('build_s', 0):.1f} s.{how} "
             "Push = saving the current weights and handing them to the engine (LoRA: a new adapter request, or "
             "the adapter folded into the weights and reloaded in place; full fine-tuning: the weights reloaded "
             "in place); wake/sleep = vLLM sleep mode (CUDA only)."),
             "", "| round | round time (s) | pushes | push (s) | wake (s) | sleep (s) | generation (s) | push share |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in sorted(timings.get("rounds", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {key} | {r['seconds']:.1f} | {r['pushes']} | {r['push_s']:.2f} | {r['wake_s']:.2f} | "
                     f"{r['sleep_s']:.2f} | {r['use_s']:.1f} | {_pct(r['push_share'], 2)} |")
    return lines


def _plot_accuracy(evals: dict[int, dict[str, Any]], path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = list(evals)
    tasks = sorted({t for ev in evals.values() for t in ev.get("per_task", {})})
    for task in tasks:
        xs = [r for r in rounds if task in evals[r].get("per_task", {})]
        ax.plot(xs, [100 * evals[r]["per_task"][task]["accuracy"] for r in xs], marker="o", label=task)
    ax.set_xticks(rounds, [_label(r) for r in rounds])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_guidelines(stats: dict[int, dict[str, Any]], path: Path, plt) -> None:
    ids = sorted({g for s in stats.values() for g in s.get("guidelines", {})}, key=lambda g: (len(g), g))
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(ids)), 4))
    width = 0.8 / max(1, len(stats))
    for i, (r, s) in enumerate(stats.items()):
        rates = [100 * s.get("guidelines", {}).get(g, {}).get("accept_rate", 0.0) for g in ids]
        ax.bar([j + i * width for j in range(len(ids))], rates, width=width, label=f"round {r}")
    ax.set_xticks([j + width * (len(stats) - 1) / 2 for j in range(len(ids))], ids, rotation=90, fontsize=7)
    ax.set_ylabel("accepted paths (%)")
    ax.set_title("Guideline accept rate per round (answer check passed / candidates)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_kept(stats: dict[int, dict[str, Any]], path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = list(stats)
    ax.bar(rounds, [stats[r].get("kept", 0) for r in rounds], color="tab:blue", label="kept paths")
    ax.plot(rounds, [stats[r].get("questions_solved", 0) for r in rounds], color="tab:orange", marker="o",
            label="questions solved")
    ax.plot(rounds, [stats[r].get("hint", {}).get("recovered", 0) for r in rounds], color="tab:green",
            marker="s", label="solved only with the hint")
    ax.set_xticks(rounds, [f"round {r}" for r in rounds])
    ax.set_ylabel("count")
    ax.set_title("Paths kept per round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(run_dir: str | Path, evals: dict[int, dict[str, Any]] | None = None,
                stats: dict[int, dict[str, Any]] | None = None) -> list[Path]:
    """Write the PNG plots the data allows into ``<run_dir>/plots``; returns the files written.

    ``evals`` and ``stats`` (as ``load_evaluations`` / ``load_round_stats`` return them) are read from the run
    directory when not given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    evals = load_evaluations(run_dir) if evals is None else evals
    stats = load_round_stats(run_dir) if stats is None else stats
    out = RunLayout(run_dir).plots
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if evals:
        written.append(out / "accuracy_per_round.png")
        _plot_accuracy(evals, written[-1], plt)
    if stats:
        if any(s.get("guidelines") for s in stats.values()):
            written.append(out / "guideline_accept_rates.png")
            _plot_guidelines(stats, written[-1], plt)
        written.append(out / "paths_kept_per_round.png")
        _plot_kept(stats, written[-1], plt)
    return written


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write ``<run_dir>/report.md`` and its plots from the run's files; returns the report's path.

    Args:
        run_dir: The run directory of a ``regenesis fit`` run.
        title: Heading of the report (default: the run directory's name).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"report: run directory {run_dir} does not exist; pass the run_dir of a fit run")
    evals, stats = load_evaluations(run_dir), load_round_stats(run_dir)
    timings = _read_json(RunLayout(run_dir).timings)
    plots = write_plots(run_dir, evals, stats)
    lines = [f"# ReGenesis run report: {title or run_dir.name}", "", f"Run directory: `{run_dir}`", ""]
    lines += ["## Accuracy per task and round", ""]
    lines += _accuracy_table(evals) if evals else ["No evaluation was written (eval/ is empty)."]
    lines += _stop_line(run_dir)
    lines += ["", "## Synthesis per round", ""]
    lines += _synthesis_table(stats) if stats else ["No synthesis statistics were written (no round-*/summary.json)."]
    lines += ["", "## Weight push and engine timings", ""]
    lines += _timings_table(timings) if timings else ["No engine timings were written."]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem.replace('_', ' ')}]({p.relative_to(run_dir).as_posix()})" for p in plots]
    return write_text(RunLayout(run_dir).report, "\n".join(lines) + "\n")
